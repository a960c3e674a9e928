"""torchtitan's ``CheckpointManager`` (torchtitan/components/checkpointer/dcp.py), the whole
checkpointing system of torchtitan's trainer, in its synchronous and asynchronous modes.

How a trainer uses it, and how the adapter maps the suite onto that:

- the trainer builds one manager for its run, with a ``Config`` (``enable=True``, ``folder``,
  ``async_mode``, ``keep_latest_k``), its model parts, optimizers, LR schedulers, dataloader
  and ``states``, the other state to save (torchtitan passes ``{"train_state": trainer}``).
  The suite's state dict becomes the manager's ``states``: its top-level entries as they
  are, except one named ``model``, ``optimizer``, ``lr_scheduler`` or ``dataloader`` (the
  keys the manager fills with its components), which goes into that component's slot as a
  Stateful returning it (the model's as ``{"model": entry}``, since the manager flattens its
  model's state dict into the top level), so the saved keys stay the suite's. Slots the
  state leaves empty hold no model parts, empty optimizer and LR-scheduler states and no
  dataloader (saved as torchtitan saves a missing one: ``dataloader``, ``None``);
- ``manager.save(step)`` writes ``<folder>/step-<step>``; the suite's checkpoint path is the
  manager's folder, and each save to it is the next step (one more than the highest step
  saved there, counted per path in this process, so two saves in flight never share a step);
- ``manager.load()`` loads the latest step whose ``.metadata`` exists; when there is none it
  returns ``False`` ("fresh start") and loads nothing, which the adapter reports as
  ``FileNotFoundError`` (the Backend contract's load either loads or raises);
- ``save`` uses ``async_mode="disabled"``; ``async_save`` a manager with
  ``CKPTCONF_TORCHTITAN_ASYNC_MODE`` (default ``async``: ``dcp.async_save`` on a gloo group
  the manager makes; ``async_with_pinned_mem``: DCP's ``DefaultStager`` with pinned memory
  and a checkpointing process). Its future's ``result()`` is
  ``manager.maybe_wait_for_saving()``. One manager per path and mode is kept in each process
  (a trainer keeps one; the async one makes its gloo group when built, collectively).

Declared unsupported, with the reasons below: ``storage`` (``dcp_save``/``dcp_load`` build
their own storage from the checkpoint id: nothing can be driven by hand or wrapped for fault
injection) and, without an accelerator, ``async_save`` in ``async_with_pinned_mem`` mode.
The manager saves and loads on the default process group (``dcp.save``/``dcp.load`` get no
``process_group``): a save or load on a sub-group of the world raises, saying so.

Everything under the manager is DCP (``dcp.save``/``async_save``/``load`` with the default
planners and the filesystem storage), so the backend ``inherits`` torch-dcp's known failures.
"""

from __future__ import annotations

import os
from typing import Any

from ..backend import Backend
from ..builtin import EXPECTATIONS_DIR

__all__ = ["backend"]

ASYNC_MODES = ("async", "async_with_pinned_mem")

_NO_STORAGE = (
    "CheckpointManager.dcp_save/dcp_load build DCP's storage from the checkpoint id "
    "(dcp.save(checkpoint_id=...)); they take no storage writer or reader to drive or wrap"
)
_PINNED_NEEDS_ACCELERATOR = (
    "async_mode='async_with_pinned_mem' builds DCP's DefaultStager with pinned memory and "
    "non-blocking copies, which raises 'Non-blocking copy requires that the current "
    "accelerator is available' without one (torch/distributed/checkpoint/staging.py); run it "
    "on a GPU, or leave CKPTCONF_TORCHTITAN_ASYNC_MODE at 'async'"
)


def async_mode() -> str:
    """The async mode of ``async_save``, from ``CKPTCONF_TORCHTITAN_ASYNC_MODE``."""
    mode = os.environ.get("CKPTCONF_TORCHTITAN_ASYNC_MODE", "async")
    if mode not in ASYNC_MODES:
        raise RuntimeError(
            f"backend 'torchtitan': CKPTCONF_TORCHTITAN_ASYNC_MODE={mode!r} is none of "
            f"{', '.join(ASYNC_MODES)}"
        )
    return mode


class _NoState:
    """An optimizer or LR scheduler container with nothing to save (the state has none)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class _Slot:
    """The suite's top-level ``key`` entry (a dict) in the manager's component slot of that
    name: saved under ``key`` as a Stateful, as torchtitan's OptimizersContainer is."""

    def __init__(self, state: dict[str, Any], key: str):
        self.state, self.key = state, key

    def state_dict(self) -> dict[str, Any]:
        return self.state[self.key]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state[self.key] = state_dict


class _Model:
    """The suite's top-level ``model`` entry in the manager's ``model`` slot. The manager
    flattens its model's ``state_dict()`` into the top level (ModelWrapper), so this returns
    ``{"model": entry}`` and the saved keys stay the suite's; ``load_state_dict`` gets the
    whole loaded state, as ModelWrapper does."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.state["model"]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state["model"] = state_dict["model"]


_COMPONENTS = ("model", "optimizer", "lr_scheduler", "dataloader")
"""The top-level keys the manager fills with its components (torchtitan's MODEL, OPTIMIZER,
LR_SCHEDULER, DATALOADER)."""

_MANAGERS: dict[tuple[str, str], Any] = {}
_STEPS: dict[str, int] = {}


def _states(state_dict: dict[str, Any], manager) -> dict[str, Any]:
    """The manager's ``states`` for the suite's ``state_dict``: its other top-level entries as
    they are, and an entry named after one of the manager's components in that component's
    slot (a dict: the model as :class:`_Model`, the others as :class:`_Slot`); the slots the
    state leaves empty keep the manager's own (no model parts, empty optimizer and LR
    scheduler states, no dataloader)."""
    states = {k: v for k, v in state_dict.items() if k not in _COMPONENTS}
    for key in _COMPONENTS:
        if key not in state_dict:
            states[key] = manager.own[key]
            continue
        if not isinstance(state_dict[key], dict):
            raise TypeError(
                f"torchtitan's CheckpointManager saves its {key!r} component with state_dict(): "
                f"a top-level {key!r} entry must be a dict, not {type(state_dict[key]).__name__}"
            )
        states[key] = _Model(state_dict) if key == "model" else _Slot(state_dict, key)
    return states


def _manager(path: str, mode: str, state_dict: dict[str, Any]):
    """This process's manager for ``path`` in ``mode``, saving or loading ``state_dict``."""
    from torchtitan.components.checkpoint import CheckpointManager

    key = (path, mode)
    manager = _MANAGERS.get(key)
    if manager is None:
        folder = os.path.abspath(path)
        config = CheckpointManager.Config(
            enable=True, folder=os.path.basename(folder), async_mode=mode, interval=1
        )
        manager = CheckpointManager(
            config,
            dataloader=None,
            model_parts=[],
            optimizers=_NoState(),
            lr_schedulers=_NoState(),
            states={},
            sd_adapter=None,
            base_folder=os.path.dirname(folder),
        )
        manager.own = {k: manager.states[k] for k in _COMPONENTS}
        _MANAGERS[key] = manager
    manager.states = _states(state_dict, manager)
    return manager


def _check_group(process_group) -> None:
    import torch.distributed as dist

    if process_group is None or not dist.is_initialized():
        return
    if dist.get_world_size(process_group) != dist.get_world_size():
        raise NotImplementedError(
            "torchtitan's CheckpointManager saves and loads on the default process group "
            "(dcp.save/dcp.load without process_group): a sub-group of "
            f"{dist.get_world_size(process_group)} of {dist.get_world_size()} ranks cannot "
            "be given"
        )


def _next_step(path: str, manager) -> int:
    step = max(manager._find_load_step(), _STEPS.get(path, 0)) + 1
    _STEPS[path] = step
    return step


def _save(state_dict: dict[str, Any], path: str, *, process_group=None) -> None:
    _check_group(process_group)
    manager = _manager(path, "disabled", state_dict)
    manager.save(_next_step(path, manager))


class _Saving:
    """The future of an async save: ``result()`` waits as the trainer does before its next save."""

    def __init__(self, manager):
        self._manager = manager

    def result(self, timeout=None):
        self._manager.maybe_wait_for_staging()
        self._manager.maybe_wait_for_saving()


def _async_save(state_dict: dict[str, Any], path: str, *, process_group=None) -> _Saving:
    _check_group(process_group)
    manager = _manager(path, async_mode(), state_dict)
    manager.save(_next_step(path, manager))
    return _Saving(manager)


def _load(state_dict: dict[str, Any], path: str, *, process_group=None) -> None:
    _check_group(process_group)
    manager = _manager(path, "disabled", state_dict)
    if not manager.load():
        raise FileNotFoundError(
            f"torchtitan's CheckpointManager found no step-N checkpoint with a .metadata "
            f"under {path} (its load returned False: a fresh start)"
        )


class _Checkpointer:
    """The manager of one path as a checkpointer: ``save``, ``async_save``, ``load``."""

    def __init__(self, path: str):
        self.path = str(path)

    def save(self, state_dict):
        _save(state_dict, self.path)

    def async_save(self, state_dict):
        return _async_save(state_dict, self.path)

    def load(self, state_dict):
        _load(state_dict, self.path)


def backend() -> Backend:
    """torchtitan's CheckpointManager: ``save`` synchronous, ``async_save`` in the mode of
    ``CKPTCONF_TORCHTITAN_ASYNC_MODE`` (default ``async``)."""
    from importlib.metadata import version

    import torch

    mode = async_mode()
    unsupported = {"storage": _NO_STORAGE}
    if mode == "async_with_pinned_mem" and not torch.accelerator.is_available():
        unsupported["async_save"] = _PINNED_NEEDS_ACCELERATOR
    return Backend(
        name="torchtitan",
        save=_save,
        load=_load,
        async_save=_async_save,
        checkpointer=_Checkpointer,
        unsupported=unsupported,
        description=f"torchtitan {version('torchtitan')} CheckpointManager (sync, and "
        f"async_mode={mode!r} for async_save) over DCP's filesystem storage",
        expectations=str(EXPECTATIONS_DIR / "torchtitan.toml"),
        inherits="torch-dcp",
    )
