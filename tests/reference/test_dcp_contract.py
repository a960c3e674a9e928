"""What training code relies on from ``dcp.save``/``dcp.load``, in the reference with its default
arguments: Stateful values, the object kinds real stacks keep in state dicts, tensor
subclasses, refusal at save time of what cannot be stored safely, and loads that fail before
they write."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import io
import pathlib
import random
import types

import numpy as np
import pytest
import torch
from ckptconf.conformance import select_backend
from ckptconf.reference import (
    Checkpointer,
    CheckpointError,
    FileSystemReader,
    FileSystemWriter,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
    async_save,
    load,
    save,
)


class Counter:
    """A Stateful value (DCP's protocol) holding a tensor and plain objects."""

    def __init__(self, value: float, step: int):
        self.weight = torch.full((3,), value)
        self.step = step
        self.loaded = []

    def state_dict(self):
        return {"weight": self.weight, "step": self.step}

    def load_state_dict(self, state_dict):
        self.loaded.append(dict(state_dict))
        self.weight.copy_(state_dict["weight"])
        self.step = state_dict["step"]


class AppState:
    """DCP's tutorial AppState: a Stateful wrapping a model and its optimizer."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(3, 2)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01 * (seed + 1))
        self.model(torch.ones(1, 3)).sum().backward()
        self.optimizer.step()

    def state_dict(self):
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict):
        self.model.load_state_dict(state_dict["model"])
        self.optimizer.load_state_dict(state_dict["optim"])


def test_stateful_values_save_their_state_dict_and_load_through_load_state_dict(tmp_path):
    saved = {"app": AppState(1), "extra": {"counter": Counter(2.0, 7), "tag": "a"}, "n": 1}
    save(saved, tmp_path / "c")
    app, counter = AppState(5), Counter(0.0, 0)
    dest = {"app": app, "extra": {"counter": counter, "tag": None}, "n": 0}
    load(dest, tmp_path / "c")
    assert dest["app"] is app and dest["extra"]["counter"] is counter  # the same objects
    assert torch.equal(app.model.weight, saved["app"].model.weight)
    assert app.optimizer.state_dict()["param_groups"][0]["lr"] == pytest.approx(0.02)
    state = app.optimizer.state_dict()["state"][0]
    assert torch.equal(state["exp_avg"], saved["app"].optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(counter.weight, torch.full((3,), 2.0)) and counter.step == 7
    assert len(counter.loaded) == 1
    assert dest["extra"]["tag"] == "a" and dest["n"] == 1  # plain values beside them load too


def test_stateful_values_through_async_save_and_the_checkpointer(tmp_path):
    counter = Counter(3.0, 4)
    future = async_save({"c": counter}, tmp_path / "a")
    counter.weight.fill_(-1.0)  # after the call: not what is saved
    counter.step = -1
    future.result()
    ckpt = Checkpointer(FileSystemWriter(tmp_path / "k"), FileSystemReader(tmp_path / "k"))
    ckpt.save({"c": Counter(5.0, 6)})
    loaded = Counter(0.0, 0)
    load({"c": loaded}, tmp_path / "a")
    assert torch.equal(loaded.weight, torch.full((3,), 3.0)) and loaded.step == 4
    ckpt.load({"c": loaded})
    assert torch.equal(loaded.weight, torch.full((3,), 5.0)) and loaded.step == 6


OBJECTS = {  # (an OrderedDict is a container, as in DCP: its items are keys of their own)
    "ndarray": np.arange(6.0).reshape(2, 3),
    "int ndarray": np.arange(4, dtype=np.int32),
    "numpy scalar": np.float64(1.5),
    "numpy int": np.int64(-3),
    "BytesIO": io.BytesIO(b"fp8 meta"),
    "Namespace": argparse.Namespace(lr=0.1, layers=4, name="gpt", dtype=torch.bfloat16),
    "SimpleNamespace": types.SimpleNamespace(a=1, b=[1, 2]),
    "Path": pathlib.PurePosixPath("/data/shards/00001"),
    "set": {1, 2, 3},
    "frozenset": frozenset({"x"}),
    "complex": 1.5 - 2j,
    "dtype": torch.float16,
    "Size": torch.Size([2, 3]),
    "device": torch.device("cpu"),
    "numpy rng state": np.random.RandomState(0).get_state(),
    "python rng state": random.Random(1).getstate(),
    "empty bytes": b"",
    "bytearray": bytearray(b"ab"),
    "nan": float("nan"),
}


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, io.BytesIO):
        return isinstance(b, io.BytesIO) and a.getvalue() == b.getvalue()
    if isinstance(a, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("kind", sorted(OBJECTS))
def test_object_kinds_of_real_state_dicts_round_trip(tmp_path, kind):
    value = OBJECTS[kind]
    save({"w": torch.ones(2), "obj": value, "nested": {"obj": value}}, tmp_path / "c")
    dest = {"w": torch.zeros(2), "obj": None, "nested": {"obj": None}}
    load(dest, tmp_path / "c")
    assert _same(value, dest["obj"]) and _same(value, dest["nested"]["obj"]), dest


class Mode(enum.Enum):
    TRAIN = 1


@dataclasses.dataclass
class Config:
    lr: float = 0.1


UNSAFE = {
    "enum": (Mode.TRAIN, "Mode"),
    "dataclass": (Config(), "Config"),
    "generator": (torch.Generator(), "Generator"),
    "lambda": (lambda x: x, "function"),
    "deque": (collections.deque([1]), "deque"),
    "object array": (np.array([Config()], dtype=object), "ndarray"),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_what_cannot_be_stored_safely_is_refused_at_save_time(tmp_path, kind):
    value, type_name = UNSAFE[kind]
    path = tmp_path / "c"
    with pytest.raises(CheckpointError, match=rf"key 'trainer.state' \(of type {type_name}\)"):
        save({"w": torch.ones(2), "trainer": {"state": value}}, path)
    assert not (path / "ckptconf.json").exists()  # nothing that looks like a checkpoint
    with pytest.raises(Exception, match=rf"key 'trainer.state' \(of type {type_name}\)"):
        async_save({"trainer": {"state": value}}, tmp_path / "a")  # at the call


def test_tensor_subclasses_round_trip(tmp_path):
    class Scaled(torch.Tensor):  # a plain subclass, as float8 and torchao types are
        pass

    weight = torch.arange(6.0).reshape(2, 3).as_subclass(Scaled)
    save({"w": weight, "nested": {"w": weight * 2}}, tmp_path / "c")
    dest = {"w": torch.zeros(2, 3).as_subclass(Scaled), "nested": {"w": torch.zeros(2, 3)}}
    load(dest, tmp_path / "c")
    assert type(dest["w"]) is Scaled and torch.equal(dest["w"], weight)
    assert torch.equal(dest["nested"]["w"], weight * 2)


def test_a_key_that_changed_kind_is_an_error_naming_it(tmp_path):
    save({"a": torch.ones(2), "b": {"x": 1}}, tmp_path / "c")
    with pytest.raises(CheckpointError, match="key 'a': the checkpoint holds a tensor"):
        load({"a": 3, "b": {"x": 0}}, tmp_path / "c")
    with pytest.raises(CheckpointError, match="key 'b.x': the destination holds a tensor"):
        load({"a": torch.zeros(2), "b": {"x": torch.zeros(1)}}, tmp_path / "c")


def test_a_load_whose_object_cannot_be_decoded_writes_nothing(tmp_path, monkeypatch):
    from ckptconf.reference import save_planner, serialization

    def unchecked(value, *, key="?"):  # a writer without the save-time check
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()

    monkeypatch.setattr(save_planner, "encode_object", unchecked)
    save({"w": torch.arange(3.0), "z": {"mode": Mode.TRAIN}}, tmp_path / "c")
    monkeypatch.setattr(save_planner, "encode_object", serialization.encode_object)
    dest = {"w": torch.zeros(3), "z": {"mode": None}}
    with pytest.raises(CheckpointError, match="object for key 'z.mode' cannot be loaded safely"):
        load(dest, tmp_path / "c")
    assert torch.equal(dest["w"], torch.zeros(3)) and dest["z"]["mode"] is None


def test_the_defaults_are_the_certified_configuration():
    """ckptconf.reference with default arguments is what the suite runs as 'reference'."""
    assert ReferenceSavePlanner().verify_replicas is True
    backend = select_backend("reference")
    planner = backend.save_planner()
    assert vars(planner) == vars(ReferenceSavePlanner())
    assert vars(backend.load_planner()) == vars(ReferenceLoadPlanner())
    ckpt = backend.checkpointer("/tmp/x")
    assert (ckpt.save_planner, ckpt.load_planner) == (None, None)  # the drivers' defaults
    assert type(backend.storage_writer("/tmp/x")) is FileSystemWriter


def test_objects_differing_between_ranks_raise_with_the_defaults():
    from ckptconf.harness.simulated import simulate_save_planning
    from ckptconf.reference import PlanValidationError

    states = [{"loader": {"epoch": 1}}, {"loader": {"epoch": 2}}]
    with pytest.raises(PlanValidationError, match="key 'loader.epoch': replicas differ"):
        simulate_save_planning(states, ReferenceSavePlanner)


class _PausedRead(io.BytesIO):
    """Object bytes whose first read waits until ``go_on`` is set (a slow storage read)."""

    def __init__(self, data: bytes, inside, go_on):
        super().__init__(data)
        self.inside, self.go_on = inside, go_on

    def read(self, *args):
        if not self.inside.is_set():
            self.inside.set()
            self.go_on.wait()
        return super().read(*args)


def test_decoding_leaves_the_programs_allowlist_alone_while_other_threads_change_it():
    """Decoding swaps nothing in torch's process-wide allowlist: a type the program allows
    during a decode stays allowed, the program's own safe_globals context ending during a
    decode does not break it, and decodes in several threads at once work."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ckptconf.reference.serialization import decode_object, encode_object

    data = encode_object({"a": np.arange(3), "ns": argparse.Namespace(x=1)}, key="k")
    before = list(torch.serialization.get_safe_globals())  # torch registers its own, too
    try:
        inside, go_on = threading.Event(), threading.Event()

        def program():
            inside.wait()
            torch.serialization.add_safe_globals([collections.deque])
            with torch.serialization.safe_globals([argparse.Namespace]):
                pass
            go_on.set()

        thread = threading.Thread(target=program)
        thread.start()
        decoded = decode_object(_PausedRead(data, inside, go_on), key="k")
        thread.join()
        assert np.array_equal(decoded["a"], np.arange(3)) and decoded["ns"].x == 1
        assert collections.deque in torch.serialization.get_safe_globals()
        with ThreadPoolExecutor(4) as pool:
            many = [
                encode_object(("v", b"", np.float64(i), {str(i)}), key=f"k{i}") for i in range(64)
            ]
            assert [d[2] for d in pool.map(decode_object, many)] == list(range(64))
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


# --- cases from public bug reports ---------------------------------------------------------------


def test_a_twice_resumed_stateful_saves_what_it_trained(tmp_path):
    """pytorch/pytorch#138575 (torchtitan): DCP's load updated a Stateful in place and then
    replaced it in the caller's dict with a copy, so the model trained on after a resume was not
    the one the next save wrote, and a twice-resumed model was subtly wrong."""
    save({"app": Counter(1.0, 1)}, tmp_path / "first")
    resumed = Counter(0.0, 0)
    state = {"app": resumed}
    load(state, tmp_path / "first")
    assert state["app"] is resumed
    resumed.weight.add_(1.0)  # trains on
    resumed.step += 1
    save(state, tmp_path / "second")
    again = Counter(0.0, 0)
    load({"app": again}, tmp_path / "second")
    assert torch.equal(again.weight, torch.full((3,), 2.0)) and again.step == 2


def test_plain_values_beside_stateful_ones_are_loaded(tmp_path):
    """pytorch/pytorch#125528: ``{"model": ..., "epoch": 0, "args": vars(args)}``; a load must
    set ``epoch`` and ``args`` in the caller's dict, not only restore the Stateful values."""
    saved_args = vars(argparse.Namespace(local_rank=0, world_size=2))
    save({"app": Counter(3.0, 7), "epoch": 5, "args": saved_args}, tmp_path / "c")
    state = {"app": Counter(0.0, 0), "epoch": 0, "args": {"local_rank": 1, "world_size": 1}}
    load(state, tmp_path / "c")
    assert state["epoch"] == 5 and state["args"] == {"local_rank": 0, "world_size": 2}
    assert state["app"].step == 7 and torch.equal(state["app"].weight, torch.full((3,), 3.0))


def test_a_loader_state_serialized_by_the_user_round_trips_byte_exact(tmp_path):
    """meta-pytorch/data#1372 and pytorch/torchtitan#409: each rank's data loader state, kept by
    the user as ``torch.save`` bytes in a BytesIO under a per-rank key. The reference stores the
    bytes and never unpickles them."""
    blobs = {}
    for rank in range(2):
        buffer = io.BytesIO()
        torch.save({"rank": rank, "consumed": [rank, 7]}, buffer)
        blobs[f"dataloader.dp_rank_{rank}"] = buffer
    save({"w": torch.ones(2), **blobs}, tmp_path / "c")
    dest = {"w": torch.zeros(2), **{key: None for key in blobs}}
    load(dest, tmp_path / "c")
    for key, buffer in blobs.items():
        assert type(dest[key]) is io.BytesIO and dest[key].getvalue() == buffer.getvalue(), key


@pytest.mark.multiprocess
def test_per_rank_values_under_one_key_are_refused_on_every_rank(tmp_path):
    """pytorch/pytorch#120356: rank 0 saves [0, 1] and rank 1 [2, 3] under ``weight``. DCP treats
    them as replicas and keeps one; with its defaults the reference refuses the save on every
    rank, naming the key and both checksums, and writes no checkpoint."""
    from ckptconf.harness import get_world

    from . import rank_scenarios as rs

    path = tmp_path / "c"
    results = get_world(2).run(rs.save_per_rank_values_under_one_key, str(path))
    for result in results:
        assert result["error"] is not None, results
        assert (
            "key 'weight' at offsets (0,): replicas differ (ranks [0] have checksum"
            in (result["error"])
        ), result
    assert not (path / "ckptconf.json").exists()


@pytest.mark.multiprocess
@pytest.mark.parametrize("kind", ["save", "load", "async_save"])
def test_a_failure_on_one_rank_before_any_collective_fails_every_rank(tmp_path, kind):
    """A Stateful's state_dict() raising on rank 1 only (at save, at load), an unsafe object on
    rank 1 only at the async_save call: every rank raises, none is left waiting for it."""
    from ckptconf.harness import get_world

    from . import rank_scenarios as rs

    results = get_world(2).run(rs.one_rank_failing_before_the_first_step, str(tmp_path / "c"), kind)
    if kind == "async_save":  # rank 1 raises at the call; rank 0's future names rank 1
        assert results[1]["error"].startswith("UnsafeObjectError: object for key 'extra'"), results
        assert "failed on rank(s) [1]" in results[0]["error"], results
    else:
        for result in results:
            assert "failed on rank(s) [1]" in result["error"], results
            assert "rank 1's loader cannot give its state" in result["error"], results


# --- attacks and edges found by review -----------------------------------------------------------


def _numpy_pickled(value) -> bytes:
    """``value`` as DCP writes it: torch.save with numpy's own pickling."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_numpy_values_pickled_by_numpy_are_refused_naming_the_global():
    """numpy's own pickling hands the file dtype.__setstate__, with which crafted bytes build
    arrays over arbitrary memory: the reference never allows it, and names what it refused."""
    from ckptconf.reference.serialization import UnsafeObjectError, decode_object

    # here without such an entry (an earlier test's import of megatron.core adds numpy's);
    # test_numpy_pickling_is_refused_even_where_the_program_allow_lists_it has it
    before = torch.serialization.get_safe_globals()
    theirs = [g for g in before if _name_of(g) in numpy_global_names()]
    try:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals([g for g in before if g not in theirs])
        with pytest.raises(UnsafeObjectError, match=r"key 'm'.*holds a numpy\.\S*_reconstruct"):
            decode_object(_numpy_pickled(np.arange(3)), key="m")
        allowed = {_name_of(g) for g in torch.serialization.get_safe_globals()}
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    assert numpy_global_names().isdisjoint(allowed)  # the reference added none of them


def test_numpy_pickling_is_refused_even_where_the_program_allow_lists_it():
    """A program's imports may allow-list numpy's own pickling for the whole process
    (megatron.core does): torch then loads it, the reference still refuses it."""
    from ckptconf.reference.serialization import UnsafeObjectError, decode_object

    value = np.arange(3, dtype=np.uint32)
    data = _numpy_pickled(value)
    theirs = [value.__reduce__()[0], np.ndarray, np.dtype, type(value.dtype)]
    with torch.serialization.safe_globals(theirs):
        assert torch.load(io.BytesIO(data), weights_only=True).tolist() == [0, 1, 2]
        with pytest.raises(
            UnsafeObjectError,
            match=r"key 'm'.*holds a numpy\.\S*_reconstruct.*refused even where the program",
        ):
            decode_object(data, key="m")
        # the reference's own numpy values still load (stored as .npy bytes, not pickled)
        from ckptconf.reference.serialization import encode_object

        assert decode_object(encode_object(value, key="n"), key="n").tolist() == [0, 1, 2]


def _name_of(entry) -> str:
    target = entry[0] if isinstance(entry, tuple) else entry
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"


def numpy_global_names() -> set[str]:
    return {
        "numpy.dtype",
        "numpy.ndarray",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
    }


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("ndarray", "object", "Object arrays cannot be loaded"),
        ("ndarray", b"not npy", "magic"),
        ("numpy_scalar", "vector", "0-d array"),
        ("Namespace", {1: 2}, "dict of str"),
        ("BytesIO", (b"x", -1), "bytes, position"),
        ("path", ("os.system", "x"), "one of"),
        ("eval", "1", "unknown stored object kind 'eval'"),
    ],
)
def test_rebuild_builds_nothing_but_its_kinds_from_plain_data(kind, payload, message):
    from ckptconf.reference.serialization import rebuild

    if payload == "object":  # an object array's .npy, as a crafted file would hold it
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.array([Mode.TRAIN], dtype=object), allow_pickle=True)
        payload = buffer.getvalue()
    elif payload == "vector":
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.arange(2), allow_pickle=False)
        payload = buffer.getvalue()
    with pytest.raises(ValueError, match=message):
        rebuild(kind, payload)


def test_equal_sets_have_equal_bytes_whatever_the_hash_seed(tmp_path):
    """Under torchrun every rank has its own string-hash seed: equal sets must still encode
    to equal bytes, or the replica check fails a save of equal values."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np, torch\n"
        "from ckptconf.reference.serialization import encode_object\n"
        "value = {'tokens': {'<pad>', '<eos>', '<bos>', '<unk>', '<mask>'},"
        " 'nested': frozenset({frozenset({'a', 'b'}), 'c'}), 'n': np.int64(3),"
        " 'tensors': {torch.arange(3.0), torch.ones(2)}}\n"
        "sys.stdout.buffer.write(encode_object(value, key='t'))\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            env={**__import__("os").environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    ]
    assert runs[0] == runs[1] == runs[2]


def test_a_list_beside_a_stateful_loads_whole(tmp_path):
    """A list of plain values is one object; a load through a Stateful puts it back whole,
    whatever the destination list held."""
    save({"model": Counter(1.0, 1), "losses": [0.9, 0.7, 0.5, 0.4]}, tmp_path / "c")
    for held in ([], [0.0, 0.0], [0.0] * 6):
        state = {"model": Counter(0.0, 0), "losses": list(held)}
        load(state, tmp_path / "c")
        assert state["losses"] == [0.9, 0.7, 0.5, 0.4], held


def test_empty_object_bytes_and_a_stateful_without_a_dict_are_named(tmp_path):
    from ckptconf.reference.serialization import UnsafeObjectError, decode_object

    with pytest.raises(
        UnsafeObjectError, match="key 'loader.pos' cannot be loaded: its stored bytes are empty"
    ):
        decode_object(b"", key="loader.pos")

    class NoDict:
        def state_dict(self):
            return [1]

        def load_state_dict(self, state_dict):
            pass

    with pytest.raises(
        CheckpointError,
        match=r"NoDict.state_dict\(\) \(the Stateful at key 'model.inner'\) returned a list",
    ):
        save({"model": {"inner": NoDict()}}, tmp_path / "c")


def test_structured_arrays_keep_their_padding_bytes():
    """numpy's reader of an in-memory .npy copies structured items field by field and leaves
    their padding as whatever memory held: a re-save then differs between ranks."""
    from ckptconf.reference.serialization import decode_object, encode_object

    aligned = np.dtype([("a", "u1"), ("b", "f8")], align=True)  # 7 bytes of padding per item
    array = np.zeros(512, dtype=aligned)
    array["a"], array["b"] = 7, 1.5
    decoded = decode_object(encode_object(array, key="stats"))
    assert decoded.tobytes() == array.tobytes()
    assert decoded.flags.writeable and decoded["b"].tolist() == [1.5] * 512


@pytest.mark.parametrize(
    "dtype",
    [
        np.dtype(("f4", (2, 3))),
        np.dtype("S"),
        np.dtype("<U7"),
        np.dtype(">i4"),
        np.dtype("<M8[ns]"),
    ],
    ids=str,
)
def test_numpy_dtypes_come_back_exactly(dtype):
    from ckptconf.reference.serialization import decode_object, encode_object

    decoded = decode_object(encode_object({"dtype": dtype}, key="d"))["dtype"]
    assert decoded == dtype and decoded.shape == dtype.shape and decoded.itemsize == dtype.itemsize


@pytest.mark.parametrize(
    "dtype",
    [np.dtype([("a", "u1"), ("b", "f8")], align=True), np.dtype(float, metadata={"unit": "m"})],
    ids=["aligned", "metadata"],
)
def test_numpy_dtypes_a_header_cannot_describe_are_refused(dtype):
    from ckptconf.reference.serialization import UnsafeObjectError, encode_object

    with pytest.raises(UnsafeObjectError, match="key 'd' .* cannot be stored exactly"):
        encode_object(dtype, key="d")


def test_a_crafted_namespace_field_cannot_change_its_class():
    from ckptconf.reference.serialization import rebuild

    built = rebuild("Namespace", {"__class__": torch.storage.TypedStorage, "lr": 0.1})
    assert type(built) is argparse.Namespace and vars(built)["__class__"] is not None


def test_a_namespace_that_refers_to_itself_is_refused_naming_the_cycle():
    from ckptconf.reference.serialization import UnsafeObjectError, encode_object

    args = argparse.Namespace(lr=0.1)
    args.me = args
    with pytest.raises(UnsafeObjectError, match="key 'args' .* refers to itself"):
        encode_object(args, key="args")


def test_plain_sets_load_without_ckptconf(tmp_path):
    """Sets are written as pickle writes them (builtins.set of a list), in a fixed order: a
    process that never imported ckptconf reads them with a weights-only load."""
    import subprocess
    import sys

    from ckptconf.reference.serialization import encode_object

    path = tmp_path / "set.pt"
    path.write_bytes(encode_object({"seen": {"b", "a", 3}, "step": 7}, key="loader"))
    script = (
        "import sys, torch\n"
        "value = torch.load(sys.argv[1], weights_only=True)\n"
        "assert 'ckptconf' not in sys.modules\n"
        "print(sorted(map(str, value['seen'])), value['step'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[0] == "['3', 'a', 'b'] 7"


def test_async_save_keeps_tuple_subclasses(tmp_path):
    # DCP's async staging rebuilds every tuple as tuple(...) (finding 33): a torch.Size comes
    # back as (2, 3); the reference stages objects as they are
    async_save({"size": torch.Size([2, 3]), "t": torch.zeros(2)}, tmp_path / "ck").result()
    state = {"size": None, "t": torch.ones(2)}
    load(state, tmp_path / "ck")
    assert type(state["size"]) is torch.Size and state["size"] == torch.Size([2, 3])
