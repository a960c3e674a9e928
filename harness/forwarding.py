"""Storage writers and readers that pass every call to another one: the base of fault wrappers.

Subclass and override one hook (calling ``super()``) to fail, kill or corrupt there;
everything else reaches ``inner`` unchanged. ``before(hook)`` runs on entry to every
protocol hook, so a wrapper that acts "at hook X" needs only that method.
"""

from __future__ import annotations

from typing import Any

from ckptconf.reference.compat import accepts_kwargs
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

__all__ = ["ForwardingStorageWriter", "ForwardingStorageReader", "staging_like"]


class _Forwarding:
    def __init__(self, inner: Any):
        self.inner = inner

    def before(self, hook: str) -> None:
        """Called on entry to every protocol hook with its name; does nothing by default."""

    def reset(self, checkpoint_id=None) -> None:
        self.inner.reset(checkpoint_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False  # a wrapper is always passed explicitly, never picked for a path

    def prepare_local_plan(self, plan):
        self.before("prepare_local_plan")
        return self.inner.prepare_local_plan(plan)

    def prepare_global_plan(self, plans):
        self.before("prepare_global_plan")
        return self.inner.prepare_global_plan(plans)


class ForwardingStorageWriter(_Forwarding, StorageWriter):
    """A StorageWriter passing every call to ``inner``."""

    def __init__(self, inner: StorageWriter):
        super().__init__(inner)

    def storage_meta(self):
        return self.inner.storage_meta()

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.before("set_up_storage_writer")
        if accepts_kwargs(self.inner.set_up_storage_writer):  # DCP passes rank= etc. only then
            self.inner.set_up_storage_writer(is_coordinator, *args, **kwargs)
        else:
            self.inner.set_up_storage_writer(is_coordinator)

    def write_data(self, plan, planner):
        self.before("write_data")
        return self.inner.write_data(plan, planner)

    def finish(self, metadata, results) -> None:
        self.before("finish")
        self.inner.finish(metadata, results)


class _ForwardedStaging:
    """DCP's ``AsyncStager`` members, forwarded to ``inner``: ``dcp.async_save`` stages through
    a writer that is an ``AsyncStager`` (``FileSystemWriter`` is) and through its own
    ``DefaultStager`` otherwise, so a wrapper must not hide the inner writer's staging."""

    inner: Any

    @property
    def _synchronize_after_execute(self) -> bool:
        return getattr(self.inner, "_synchronize_after_execute", True)

    @property
    def should_synchronize_after_execute(self) -> bool:
        return self.inner.should_synchronize_after_execute

    def stage(self, state_dict):
        return self.inner.stage(state_dict)

    def synchronize_staging(self) -> None:
        self.inner.synchronize_staging()

    def close(self) -> None:
        self.inner.close()


def staging_like(wrapper_class: type, inner: Any) -> type:
    """``wrapper_class`` (a :class:`ForwardingStorageWriter` subclass), made to forward DCP's
    ``AsyncStager`` members too when ``inner`` is an ``AsyncStager``."""
    from torch.distributed.checkpoint.staging import AsyncStager

    if not isinstance(inner, AsyncStager):
        return wrapper_class
    return type(wrapper_class.__name__, (_ForwardedStaging, wrapper_class), {})


class ForwardingStorageReader(_Forwarding, StorageReader):
    """A StorageReader passing every call to ``inner``."""

    def __init__(self, inner: StorageReader):
        super().__init__(inner)

    def read_metadata(self):
        self.before("read_metadata")
        return self.inner.read_metadata()

    def set_up_storage_reader(
        self, metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self.before("set_up_storage_reader")
        if accepts_kwargs(self.inner.set_up_storage_reader):
            self.inner.set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        else:
            self.inner.set_up_storage_reader(metadata, is_coordinator)

    def read_data(self, plan, planner):
        self.before("read_data")
        return self.inner.read_data(plan, planner)
