"""Flattened keys round-trip, collisions are errors, objects and plain data encode safely."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from ckptconf.reference.flatten import flatten_state_dict, get_by_path, set_by_path
from ckptconf.reference.serialization import (
    UnsafeObjectError,
    decode_object,
    encode_object,
    from_json_data,
    to_json_data,
)
from hypothesis import given
from hypothesis import strategies as st
from torch.distributed.checkpoint._nested_dict import flatten_state_dict as dcp_flatten

leaves = st.one_of(
    st.integers(), st.text(max_size=5), st.none(), st.builds(torch.ones, st.integers(0, 3))
)
keys = st.text(alphabet="abc", min_size=1, max_size=3)
nested = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.dictionaries(keys, children, max_size=3), st.lists(children, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(keys, nested, max_size=4))
def test_flatten_matches_dcp_keys_and_paths_round_trip(state_dict):
    try:
        ours, paths = flatten_state_dict(state_dict)
    except ValueError:
        with pytest.raises(ValueError):
            dcp_flatten(state_dict)
        return
    theirs, their_paths = dcp_flatten(state_dict)
    assert list(ours) == list(theirs)
    assert paths == their_paths
    rebuilt: dict = {}
    for key, value in ours.items():
        assert get_by_path(state_dict, paths[key]) is value
        set_by_path(rebuilt, paths[key], value)
    for key, value in ours.items():
        assert get_by_path(rebuilt, paths[key]) is value


def test_collision_names_both_paths():
    with pytest.raises(ValueError, match=r"\('a\.b',\).*\('a', 'b'\).*'a\.b'"):
        flatten_state_dict({"a.b": torch.ones(1), "a": {"b": torch.ones(1)}})


def test_lists_of_plain_values_are_leaves_and_lists_of_tensors_are_not():
    flat, paths = flatten_state_dict({"x": [1, 2], "y": [torch.ones(1), {"z": 3}]})
    assert list(flat) == ["x", "y.0", "y.1.z"]
    assert paths["y.1.z"] == ("y", 1, "z")


@pytest.mark.parametrize(
    "value",
    [
        b"raw",
        b"",
        bytearray(b"ab"),
        frozenset({1}),
        [b"", b"x"],
        3,
        2.5,
        "text",
        None,
        [1, (2, 3)],
        {"lr": 0.1, 4: "four"},
        torch.arange(4),
        torch.Size([2, 3]),
    ],
)
def test_objects_round_trip_through_the_safe_decoder(value):
    decoded = decode_object(encode_object(value))
    if isinstance(value, torch.Tensor):
        assert torch.equal(decoded, value)
    else:
        assert decoded == value and type(decoded) is type(value)


class _Exploit:
    def __reduce__(self):
        return (exec, ("import builtins; builtins.CKPTCONF_PWNED = True",))


def test_a_crafted_pickle_cannot_run_code(tmp_path):
    import builtins

    buffer = io.BytesIO()
    torch.save(_Exploit(), buffer)
    with pytest.raises(UnsafeObjectError, match="key 'evil'"):
        decode_object(buffer.getvalue(), key="evil")
    raw = pickle.dumps(_Exploit())
    with pytest.raises(UnsafeObjectError):
        decode_object(raw, key="evil")
    assert not hasattr(builtins, "CKPTCONF_PWNED")


json_data = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=4),
        st.binary(max_size=4),
    ),
    lambda c: st.one_of(
        st.lists(c, max_size=3),
        st.tuples(c, c),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), c, max_size=3),
    ),
    max_leaves=10,
)


def _same(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(json_data)
def test_plain_data_round_trips_through_json(value):
    import json

    assert _same(from_json_data(json.loads(json.dumps(to_json_data(value)))), value)


@pytest.mark.parametrize(
    "data", [{"__tuple__": 3}, {"x": 1}, {"__bytes__": "%%%"}, {"__dict__": [[[1], 2]]}]
)
def test_malformed_plain_data_is_rejected_with_where(data):
    with pytest.raises(ValueError, match="planner_data"):
        from_json_data(data, "planner_data")


def test_unsupported_types_are_named():
    with pytest.raises(TypeError, match=r"planner_data\['k'\]: set cannot be stored"):
        to_json_data({"k": {1}}, "planner_data")
