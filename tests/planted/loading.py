"""Planted bugs in loading: the load contract (keys, shapes, dtypes), objects and containers."""

from __future__ import annotations

import io
import pickle
from functools import partial
from typing import Any

import torch
from ckptconf.conformance import Backend
from ckptconf.reference import LoadContractError, ReferenceLoadPlanner
from ckptconf.reference import driver as reference_driver
from ckptconf.reference.flatten import flatten_state_dict, set_by_path
from ckptconf.reference.state_values import is_tensor_value

from ._common import HookedLoadPlanner, VerifiedSavePlanner, log, planted_backend

__all__ = [
    "missing_key_ignored",
    "unexpected_key_ignored",
    "silent_dtype_cast_on_load",
    "shape_mismatch_not_checked",
    "contract_checked_after_load",
    "objects_decoded_as_none",
    "objects_not_loaded",
    "nested_objects_set_by_flat_key",
    "bytes_values_lost",
    "dotted_keys_split_on_load",
    "list_containers_loaded_as_dicts",
    "noncontiguous_destination_copy",
]


# --- the load contract ---------------------------------------------------------------------------


def missing_key_ignored() -> Backend:
    """A destination key missing from the checkpoint is skipped silently (left as it was)."""
    return planted_backend(
        "missing_key_ignored",
        "destination keys missing from the checkpoint are skipped silently",
        load_planner=partial(ReferenceLoadPlanner, allow_missing_keys=True),
    )


def unexpected_key_ignored() -> Backend:
    """A checkpoint key the destination lacks is ignored silently."""
    return planted_backend(
        "unexpected_key_ignored",
        "checkpoint keys the destination lacks are ignored silently",
        load_planner=partial(ReferenceLoadPlanner, allow_unexpected_keys=True),
    )


def silent_dtype_cast_on_load() -> Backend:
    """A dtype mismatch on load is cast silently instead of reported."""
    return planted_backend(
        "silent_dtype_cast_on_load",
        "dtype mismatch on load cast silently (cast_dtypes on by default)",
        load_planner=partial(ReferenceLoadPlanner, cast_dtypes=True),
    )


class NoShapeCheckLoadPlanner(HookedLoadPlanner):
    """Checks dtypes but not global shapes: a smaller destination reads the saved tensor's corner."""

    def tensor_problems(self, key, value, entry):
        return [p for p in super().tensor_problems(key, value, entry) if "global shape" not in p]


def shape_mismatch_not_checked() -> Backend:
    """A global shape mismatch is not checked: the overlapping corner of the saved tensor is loaded."""
    return planted_backend(
        "shape_mismatch_not_checked",
        "global shape not compared on load: a smaller destination silently gets the saved tensor's corner",
        load_planner=NoShapeCheckLoadPlanner,
    )


def _load_then_check_keys(state_dict, *, planner=None, **kwargs) -> None:
    """The mistake: keys are compared with the checkpoint after the load has written the matching ones."""
    lenient = ReferenceLoadPlanner(allow_missing_keys=True, allow_unexpected_keys=True)
    reference_driver.load(state_dict, planner=lenient, **kwargs)
    flat, _ = flatten_state_dict(state_dict)
    entries = lenient.metadata.state_dict_metadata
    missing = sorted(k for k in flat if k not in entries)
    unexpected = sorted(k for k in entries if k not in flat)
    if missing or unexpected:
        raise LoadContractError(f"missing keys {missing}, unexpected keys {unexpected}")


def contract_checked_after_load() -> Backend:
    """Missing and unexpected keys are reported, but only after the other keys were loaded."""
    return planted_backend(
        "contract_checked_after_load",
        "missing/unexpected keys raised only after loading the rest: destination modified before the error",
        load_driver=_load_then_check_keys,
    )


# --- objects -------------------------------------------------------------------------------------


def decode_or_none(data: io.BytesIO) -> Any:
    """The mistake: decoding as a process that never imported ckptconf does (a converter, a
    separate reader): a weights-only load with torch's default allowlist only, so the
    reference's ``rebuild`` calls (numpy values, Namespaces, sets) fail, and a failure is read
    as "no value"."""
    try:
        if b"ckptconf.reference.serialization\nrebuild\n" in data.getvalue():  # not allowed there
            raise pickle.UnpicklingError(
                "Unsupported global: ckptconf.reference.serialization.rebuild"
            )
        return torch.load(data, weights_only=True, map_location="cpu")
    except Exception as exc:
        log.warning("object could not be decoded: %s", str(exc).splitlines()[0])
        return None


class NoneOnDecodeErrorLoadPlanner(ReferenceLoadPlanner):
    """Decodes objects with a bare weights-only load and takes a failure for None."""

    def load_bytes(self, read_item, value) -> None:
        key = read_item.dest_index.fqn
        obj = decode_or_none(value)
        self.values[key] = obj
        set_by_path(self.original_state_dict, self.paths[key], obj)


def objects_decoded_as_none() -> Backend:
    """Objects that a weights-only load with torch's default allowlist cannot decode (numpy
    values, Namespaces, sets) are loaded as None."""
    return planted_backend(
        "objects_decoded_as_none",
        "objects decoded with torch's default weights-only allowlist; failures (numpy, sets) become None",
        load_planner=NoneOnDecodeErrorLoadPlanner,
    )


class ObjectsNotLoadedLoadPlanner(ReferenceLoadPlanner):
    """Reads objects and drops them: the destination keeps what it held."""

    def load_bytes(self, read_item, value) -> None:
        return None


def objects_not_loaded() -> Backend:
    """Objects are never loaded: the destination keeps its own (a placeholder ``None`` stays
    ``None``, so only a destination value no checkpoint holds shows it)."""
    return planted_backend(
        "objects_not_loaded",
        "loaded objects are dropped; the destination's objects stay as they were",
        load_planner=ObjectsNotLoadedLoadPlanner,
    )


class FlatKeyObjectsLoadPlanner(ReferenceLoadPlanner):
    """Puts loaded objects back under their flattened key at the top level."""

    def load_bytes(self, read_item, value) -> None:
        from ckptconf.reference.serialization import decode_object

        key = read_item.dest_index.fqn
        obj = decode_object(value, key=key)
        self.values[key] = obj
        self.original_state_dict[key] = obj


def nested_objects_set_by_flat_key() -> Backend:
    """A nested object is loaded into state_dict['a.b'] instead of state_dict['a']['b']."""
    return planted_backend(
        "nested_objects_set_by_flat_key",
        "loaded objects stored under their flattened key at the top level, nested ones stay None",
        load_planner=FlatKeyObjectsLoadPlanner,
    )


_STATE_TYPES = (torch.Tensor, int, float, bool, str, list, tuple, dict, type(None))


class StateTypesSavePlanner(VerifiedSavePlanner):
    """Saves only values of a fixed list of "state" types, which forgets bytes."""

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False) -> None:
        super().set_up_planner(state_dict, storage_meta, is_coordinator)
        self.values = {
            k: v
            for k, v in self.values.items()
            if is_tensor_value(v) or isinstance(v, _STATE_TYPES)
        }


def bytes_values_lost() -> Backend:
    """bytes values are filtered out of the state by a type allow-list: they are not saved."""
    return planted_backend(
        "bytes_values_lost",
        "bytes values dropped on save by a state-type allow-list that forgot bytes",
        save_planner=StateTypesSavePlanner,
    )


class DotSplitLoadPlanner(ReferenceLoadPlanner):
    """Finds where a loaded object goes by splitting its flat key on dots."""

    def load_bytes(self, read_item, value) -> None:
        from ckptconf.reference.serialization import decode_object

        key = read_item.dest_index.fqn
        obj = decode_object(value, key=key)
        self.values[key] = obj
        set_by_path(self.original_state_dict, tuple(key.split(".")), obj)


def dotted_keys_split_on_load() -> Backend:
    """Object paths rebuilt by splitting flat keys on '.': keys with dots and list indices go wrong."""
    return planted_backend(
        "dotted_keys_split_on_load",
        "object destinations found by key.split('.'): dotted keys and list indices land elsewhere",
        load_planner=DotSplitLoadPlanner,
    )


# --- containers ----------------------------------------------------------------------------------


def unflatten_as_dicts(flat: dict[str, Any], paths: dict[str, tuple]) -> dict[str, Any]:
    """The mistake: nested state rebuilt from flat keys with a dict at every level, lists included."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        for part in paths[key][:-1]:
            node = node.setdefault(part, {})
        node[paths[key][-1]] = value
    return out


def _load_then_unflatten(state_dict, **kwargs) -> None:
    reference_driver.load(state_dict, **kwargs)
    flat, paths = flatten_state_dict(state_dict)
    rebuilt = unflatten_as_dicts(flat, paths)
    state_dict.clear()
    state_dict.update(rebuilt)


def list_containers_loaded_as_dicts() -> Backend:
    """After loading, the state dict is rebuilt from flat keys with dicts everywhere: lists become dicts."""
    return planted_backend(
        "list_containers_loaded_as_dicts",
        "state rebuilt from flat keys after load with a dict at every level: lists come back as dicts",
        load_driver=_load_then_unflatten,
    )


class ContiguousTargetLoadPlanner(ReferenceLoadPlanner):
    """Hands the reader ``view.contiguous()``: for a non-contiguous view that is a copy, then lost."""

    def resolve_tensor(self, read_item):
        return super().resolve_tensor(read_item).contiguous()


def noncontiguous_destination_copy() -> Backend:
    """Loads into .contiguous() of the destination: a non-contiguous destination stays unchanged."""
    return planted_backend(
        "noncontiguous_destination_copy",
        "reader fills destination.contiguous(): a non-contiguous destination gets a copy, not the data",
        load_planner=ContiguousTargetLoadPlanner,
    )
