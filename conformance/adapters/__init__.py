"""Adapters for third-party checkpoint backends, selectable by name when their package is
installed: ``ckptconf run --backend s3torchconnector``.

One module per backend, each with a ``backend()`` returning the :class:`~..Backend`, its
``inherits`` and ``unsupported`` taken from the backend's own docs and source. A name whose
package is missing says which extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["ADAPTERS", "Adapter", "AdapterUnavailable", "load_adapter"]


@dataclass(frozen=True)
class Adapter:
    """A third-party backend's adapter: the module with its ``backend()``, the packages it
    needs and the extra that installs them."""

    module: str
    needs: tuple[str, ...]
    extra: str
    summary: str


ADAPTERS: dict[str, Adapter] = {
    "s3torchconnector": Adapter(
        "s3torchconnector",
        ("s3torchconnector", "tenacity", "boto3"),
        "s3",
        "AWS s3torchconnector's S3StorageWriter/S3StorageReader on an S3 bucket "
        "(CKPTCONF_S3_BUCKET; AWS_ENDPOINT_URL for a local server)",
    ),
    "megatron": Adapter(
        "megatron",
        ("megatron.core.dist_checkpointing.strategies.torch",),
        "megatron",
        "megatron-core's MCoreSavePlanner/MCoreLoadPlanner with DCP's filesystem storage",
    ),
    "nvidia-resiliency-ext": Adapter(
        "nvidia_resiliency_ext",
        ("nvidia_resiliency_ext.checkpointing.async_ckpt.state_dict_saver",),
        "nvrx",
        "nvidia-resiliency-ext's FileSystemWriterAsync under its own driver",
    ),
    "torchtitan": Adapter(
        "torchtitan",
        ("torchtitan.components.checkpoint",),
        "torchtitan",
        "torchtitan's CheckpointManager, sync save and async_save "
        "(CKPTCONF_TORCHTITAN_ASYNC_MODE: async or async_with_pinned_mem)",
    ),
    "gcsfs": Adapter(
        "gcsfs",
        ("gcsfs", "google.cloud.storage"),
        "gcs",
        "DCP's FsspecWriter/FsspecReader on Google Cloud Storage through gcsfs "
        "(CKPTCONF_GCS_BUCKET; STORAGE_EMULATOR_HOST for a local emulator)",
    ),
}
"""Adapter name -> where it lives and what it needs."""


class AdapterUnavailable(ImportError):
    """An adapter's third-party package is not installed."""


def load_adapter(name: str):
    """The :class:`~..Backend` of adapter ``name``.

    Raises:
        AdapterUnavailable: a package it needs is missing; the message names the extra.
    """
    adapter = ADAPTERS[name]
    for package in adapter.needs:
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise AdapterUnavailable(
                f"backend {name!r} needs the {package!r} package ({exc}); install it with "
                f"pip install 'ckptconf[{adapter.extra}]'"
            ) from exc
    module = importlib.import_module(f"{__name__}.{adapter.module}")
    return module.backend()
