"""Storage and metadata: what the backend's reader says is in a checkpoint, and what its files hold.

core: the reader's metadata matches the saved state (every key, size, dtype, chunks
tiling each tensor exactly, objects as bytes, nothing else), also when the storage is
driven by hand through DCP's protocol; a re-save into a used path leaves nothing of
the old checkpoint; two sibling checkpoints saved at once stay apart; a data file cut
short inside saved bytes fails the load on every rank.

strict (``integrity``): a flipped bit, a truncated or deleted file, or tampered metadata
fails the load on every rank, or (where the change hit unused bytes) loads exactly the
saved values; never a load without error and with a wrong value.

The backend's files are opaque here: the suite walks the checkpoint folder, finds the
saved tensor bytes by searching the files for the value-encoded bytes of each chunk
the metadata lists (a backend that compresses gets uniform draws instead), and calls
metadata every file without which ``read_metadata`` fails or says something else.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from ckptconf.harness import WorldError, WorldTimeout, get_world
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from .. import rank_ops, rank_ops_storage
from ..backend import Backend, BackendRef
from ..cases import SaveLoadCase, TensorSpec
from ..checkpoint_files import (
    DataSpan,
    checkpoint_files,
    data_spans,
    describe_offset,
    nonempty_files,
    set_byte,
    truncate_file,
)
from ..rank_ops_storage import HandCase, HandTensor, Piece
from ..runner import ConformanceFailure, _failure, _listing
from ..strategies import (
    _no_prefix_clash,
    global_shapes,
    layouts,
    object_values,
    save_load_cases,
    tensor_keys,
)
from .roundtrip import kinds_for

__all__ = ["StorageTests"]

MAX_SIDE = 6
TIMEOUT = 60.0
_MAX_PROBED = 4096  # metadata bytes probed for changes the reader accepts, per example
_SCALE = 1 << 16
_NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
# one name a prefix of the other: a reader that lists by prefix mixes the two up
_SIBLING_NAMES = ("step_1", "step_10")


# --- cases -------------------------------------------------------------------------------------


def _cases(backend: Backend, *, worlds=(1, 2)) -> st.SearchStrategy[SaveLoadCase]:
    """Flat, same-layout cases of the layouts and features the backend supports."""
    return save_load_cases(
        save_worlds=worlds,
        same_layout=True,
        kinds=kinds_for(backend),
        strided=False,
        objects=backend.supports("objects"),
        max_tensors=2,
        max_side=MAX_SIDE,
        allow_empty=backend.supports("empty_tensors"),
        nested=False,
    ).filter(lambda c: backend.supports("scalar_tensors") or all(s.shape for s in c.tensors))


@st.composite
def _sized_cases(draw, backend: Backend) -> SaveLoadCase:
    """Flat same-layout cases of 1 or 2 tensors of 2 elements or more (something to corrupt:
    a chunk's bytes long enough to find, a layout with numbers in it), objects included."""
    world = draw(st.sampled_from([1, 2]), label="world")
    count = draw(st.integers(1, 2))
    keys = draw(
        st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(
            _no_prefix_clash
        )
    )
    specs, lays = [], []
    for i, key in enumerate(keys):
        shape = draw(
            global_shapes(min_dims=1, max_dims=3, max_side=MAX_SIDE, allow_empty=False).filter(
                lambda s: math.prod(s) >= 2
            )
        )
        dtype = draw(st.sampled_from(["float64", "int64", "float32"]))
        specs.append(TensorSpec(key, shape, dtype, salt=i * 1000))
        lays.append(
            draw(
                layouts(
                    world_size=world,
                    shape=shape,
                    kinds=kinds_for(backend),
                    strided=False,
                )
            )
        )
    objects = ()
    if backend.supports("objects"):
        names = draw(st.lists(st.sampled_from(["step", "tag"]), max_size=2, unique=True))
        objects = tuple((f"obj_{n}", draw(object_values())) for n in names)
    return SaveLoadCase(tuple(specs), tuple(lays), tuple(lays), world, world, objects)


def _resalted(case: SaveLoadCase, salt: int = 777) -> SaveLoadCase:
    """The same keys, shapes and layouts with other values (objects too)."""
    tensors = tuple(dataclasses.replace(t, salt=t.salt + salt) for t in case.tensors)
    objects = tuple((key, ("v2", value)) for key, value in case.objects)
    return dataclasses.replace(case, tensors=tensors, objects=objects)


@st.composite
def _other_case(draw, backend: Backend, first: SaveLoadCase) -> SaveLoadCase:
    """Another state: other keys, shapes and world, some keys taken over by new shapes."""
    second = draw(_cases(backend), label="second state")
    reuse = draw(
        st.integers(0, min(len(first.tensors), len(second.tensors))),
        label="keys reused",
    )
    tensors = [
        dataclasses.replace(t, key=first.tensors[i].key if i < reuse else t.key, salt=t.salt + 500)
        for i, t in enumerate(second.tensors)
    ]
    keys = [t.key for t in tensors] + [k for k, _ in second.objects]
    if len(set(keys)) != len(keys) or not _no_prefix_clash(keys):
        tensors = [dataclasses.replace(t, salt=t.salt + 500) for t in second.tensors]
    return dataclasses.replace(second, tensors=tuple(tensors))


@st.composite
def _hand_cases(draw, backend: Backend) -> HandCase:
    """Hand-made plans: each tensor whole on one rank, or cut along one dim into a piece per rank."""
    world = draw(st.sampled_from([1, 2]), label="world")
    count = draw(st.integers(1, 3))
    keys = draw(
        st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(
            _no_prefix_clash
        )
    )
    tensors = []
    for i, key in enumerate(keys):
        shape = draw(global_shapes(min_dims=1, max_dims=3, max_side=MAX_SIDE, allow_empty=False))
        dtype = draw(st.sampled_from(["float64", "float32", "int64"]))
        spec = TensorSpec(key, shape, dtype, salt=i * 1000)
        if world == 1 or draw(st.booleans()):
            pieces = (Piece(draw(st.integers(0, world - 1)), (0,) * len(shape), shape),)
        else:
            dim = draw(st.integers(0, len(shape) - 1))
            cuts = sorted(
                draw(
                    st.lists(
                        st.integers(0, shape[dim]),
                        min_size=world - 1,
                        max_size=world - 1,
                    )
                )
            )
            if not backend.supports("uneven_shards"):
                step = -(-shape[dim] // world)
                cuts = [min(shape[dim], step * (r + 1)) for r in range(world - 1)]
            bounds = [0, *cuts, shape[dim]]
            pieces = tuple(
                Piece(
                    r,
                    tuple(bounds[r] if d == dim else 0 for d in range(len(shape))),
                    tuple(
                        bounds[r + 1] - bounds[r] if d == dim else n for d, n in enumerate(shape)
                    ),
                )
                for r in range(world)
                if bounds[r + 1] > bounds[r]
            )
        tensors.append(HandTensor(spec, pieces))
    objects = ()
    if backend.supports("objects"):
        names = draw(st.lists(st.sampled_from(["obj_a", "obj_b"]), max_size=2, unique=True))
        objects = tuple(
            (name, f"{name}:{n}:".encode() * draw(st.integers(1, 9)), n % world)
            for n, name in enumerate(names)
        )
    return HandCase(world, tuple(tensors), objects)


# --- running on the ranks ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Example:
    """One drawn example: runs rank functions, and fails naming backend, case and reproduction."""

    backend: Backend
    text: str
    repro: str

    @property
    def ref(self) -> BackendRef:
        return BackendRef.of(self.backend)

    def run(self, world: int, what: str, fn, *args) -> list:
        """``fn(*args)`` on every rank of a warm world; a hang or a rank's error fails the test."""
        try:
            return get_world(world).run(fn, *args, timeout=TIMEOUT)
        except WorldTimeout as exc:
            raise self.fail(f"{what} hung", str(exc)) from None
        except WorldError as exc:
            raise self.fail(f"{what} raised", str(exc)) from None

    def fail(self, what: str, body: str) -> ConformanceFailure:
        """The failure to raise: ``[backend] what``, the case, ``body``, the reproduction."""
        return _failure(self.backend, what, self.text, body, self.repro)


# --- metadata checks ---------------------------------------------------------------------------


def _expected_entries(case: SaveLoadCase) -> dict[str, tuple]:
    out: dict[str, tuple] = {s.key: ("tensor", tuple(s.shape), s.dtype) for s in case.tensors}
    out.update({key: ("bytes",) for key, _ in case.objects})
    return out


def _tiling_problems(key: str, shape: tuple[int, ...], chunks) -> list[str]:
    """Chunks out of bounds, elements no chunk holds, elements several chunks hold."""
    import torch

    problems = []
    cover = torch.zeros(shape, dtype=torch.int32)
    for offsets, sizes in chunks:
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            problems.append(
                f"key {key!r}: chunk {offsets}+{sizes} has the wrong number of dims for {shape}"
            )
            continue
        if any(o < 0 or o + n > d for o, n, d in zip(offsets, sizes, shape)):
            problems.append(
                f"key {key!r}: chunk at offsets {offsets} of sizes {sizes} lies outside {shape}"
            )
            continue
        cover[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))] += 1
    for count, what in ((0, "no chunk holds"), (2, "several chunks hold")):
        bad = (cover == 0) if count == 0 else (cover > 1)
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            problems.append(
                f"key {key!r}: {what} {int(bad.sum())} element(s), the first at global index {first} "
                f"(chunks {list(chunks)})"
            )
    return problems


def _metadata_problems(expected: dict[str, tuple], summary: dict[str, dict]) -> list[str]:
    """Every way the reader's metadata summary differs from the saved state."""
    problems = [f"key {k!r} is missing" for k in expected if k not in summary]
    problems += [
        f"key {k!r} is in the metadata but was not saved ({summary[k]})"
        for k in summary
        if k not in expected
    ]
    for key, want in expected.items():
        got = summary.get(key)
        if got is None:
            continue
        if got["kind"] != want[0]:
            problems.append(f"key {key!r}: {got['kind']} metadata, expected {want[0]}")
            continue
        if want[0] != "tensor":
            continue
        if got["size"] != want[1]:
            problems.append(f"key {key!r}: size {list(got['size'])}, saved {list(want[1])}")
            continue
        if got["dtype"] != want[2]:
            problems.append(f"key {key!r}: dtype {got['dtype']}, saved {want[2]}")
        problems += _tiling_problems(key, want[1], got["chunks"])
    return problems


def _what_changed(before: dict[str, dict], after: dict[str, dict]) -> str:
    """How a metadata summary changed: ``gap`` (some tensor's chunks, all in bounds and
    disjoint, no longer cover it: a loader that does not check coverage leaves old values),
    ``chunks`` (other changes of chunks only), ``layout`` (keys, kinds, sizes, dtypes) or
    ``location`` (nothing in the summary: where the data lies)."""

    def without_chunks(summary):
        return {k: {f: v for f, v in e.items() if f != "chunks"} for k, e in summary.items()}

    if before == after:
        return "location"
    if without_chunks(before) != without_chunks(after):
        return "layout"
    problems = [
        p
        for key, entry in after.items()
        if entry["kind"] == "tensor"
        for p in _tiling_problems(key, entry["size"], entry["chunks"])
    ]
    only_gaps = problems and all("no chunk holds" in p for p in problems)
    return "gap" if only_gaps else "chunks"


def _check_metadata(example: _Example, expected: dict, summaries: list[dict], when: str) -> None:
    """Raise if any rank's metadata summary differs from ``expected`` (or from rank 0's)."""
    problems = [f"rank 0: {p}" for p in _metadata_problems(expected, summaries[0])]
    problems += [
        f"rank {r} reads other metadata than rank 0: {s}"
        for r, s in enumerate(summaries)
        if s != summaries[0]
    ]
    if problems:
        raise example.fail(
            f"the metadata read back {when} does not match the saved state",
            "\n".join(f"  {p}" for p in problems[:12]),
        )


def _check_checkpoint(example: _Example, case: SaveLoadCase, path: str, when: str) -> None:
    """The checkpoint at ``path`` holds exactly ``case``: metadata first, then loaded values."""
    read = rank_ops_storage.read_metadata_summary
    summaries = example.run(case.save_world, f"read_metadata {when}", read, example.ref, path)
    _check_metadata(example, _expected_entries(case), summaries, when)
    results = example.run(
        case.save_world, f"load {when}", rank_ops.load_case, example.ref, case, path
    )
    mismatches = [m for r in results for m in r]
    if mismatches:
        raise example.fail(
            f"{len(mismatches)} value(s) loaded {when} differ from the last state saved",
            _listing(mismatches),
        )


# --- the checkpoint's files ----------------------------------------------------------------------


def _saved(example: _Example, case: SaveLoadCase, path: str) -> tuple[list[str], dict]:
    """Save ``case``; return the checkpoint's files and rank 0's metadata summary."""
    example.run(case.save_world, "save", rank_ops.save_case, example.ref, case, path)
    files = checkpoint_files(path)
    if not files:
        pytest.skip("unsupported by backend: it wrote no files under the checkpoint path")
    read = rank_ops_storage.read_metadata_summary
    return files, example.run(1, "read_metadata", read, example.ref, path)[0]


def _pick(data, items: Sequence, label: str):
    """One of ``items``, drawn as a fraction of its length rather than an index: the files'
    sizes vary a little between runs (paths and ids in them), and hypothesis must draw
    with the same bounds when it replays an example."""
    return items[data.draw(st.integers(0, _SCALE - 1), label=label) * len(items) // _SCALE]


def _check_corrupted_load(
    example: _Example, case: SaveLoadCase, path: str, change: str, *, must_raise: bool
) -> None:
    """Load after ``change``: every rank raises, or (unless ``must_raise``) every value is right."""
    example = dataclasses.replace(example, text=f"{example.text}\ncorruption: {change}")
    try:
        outcomes = get_world(case.save_world).run(
            rank_ops_storage.load_outcome, example.ref, case, path, timeout=TIMEOUT
        )
    except WorldTimeout as exc:
        raise example.fail("the load of a corrupted checkpoint hung", str(exc)) from None
    except WorldError as exc:
        raise example.fail("a rank crashed loading a corrupted checkpoint", str(exc)) from None
    raised = [r for r, o in enumerate(outcomes) if o["raised"]]
    quiet = [r for r, o in enumerate(outcomes) if not o["raised"]]
    if not quiet:
        return
    errors = "\n".join(f"  rank {r} raised {outcomes[r]['error'][:600]}" for r in raised)
    wrong = [m for r in quiet for m in outcomes[r]["mismatches"]]
    if wrong:
        raise example.fail(
            f"a corrupted checkpoint loaded without error on rank(s) {quiet}, with wrong values",
            _listing(wrong) + ("\n" + errors if errors else ""),
        )
    if raised:
        raise example.fail(
            f"rank(s) {raised} raised loading a corrupted checkpoint, rank(s) {quiet} returned normally",
            errors,
        )
    if must_raise:
        raise example.fail(
            "the load returned without error although bytes it must read are missing",
            "  every rank returned normally, with the saved values: the bytes lost were zeros "
            "(a zero fill restores them) or were read from somewhere else",
        )


# --- the suite ---------------------------------------------------------------------------------


@pytest.mark.ckpt_suite("storage")
class StorageTests:
    """The backend's storage: metadata, re-saves, siblings, and corrupted files."""

    @pytest.mark.ckpt_level("core")
    @given(data=st.data())
    def test_metadata_matches_the_saved_state(self, backend, ckpt_path, ckpt_repro, data):
        """After a save, ``storage_reader(path).read_metadata()`` on every rank lists every key
        saved and no other: tensors with their size, dtype and chunks tiling them exactly,
        objects as ``BytesStorageMetadata``."""
        case = data.draw(_cases(backend), label="case")
        example, path = _Example(backend, case.describe(), ckpt_repro), ckpt_path()
        example.run(case.save_world, "save", rank_ops.save_case, example.ref, case, path)
        read = rank_ops_storage.read_metadata_summary
        summaries = example.run(case.save_world, "read_metadata", read, example.ref, path)
        _check_metadata(example, _expected_entries(case), summaries, "after a save")

    @pytest.mark.ckpt_level("core")
    @given(data=st.data())
    def test_storage_protocol_by_hand(self, backend, ckpt_path, ckpt_repro, data):
        """The backend's StorageWriter driven through DCP's save protocol by hand (the test is
        the planner: set_up_storage_writer, prepare_local_plan, prepare_global_plan,
        write_data, finish with metadata built from the WriteResults), then its
        StorageReader the same way: the metadata lists exactly what was written and every
        chunk it lists reads back with its values, on every rank."""
        hand = data.draw(_hand_cases(backend), label="hand case")
        example, path = _Example(backend, hand.describe(), ckpt_repro), ckpt_path()
        write, read = rank_ops_storage.write_by_hand, rank_ops_storage.read_by_hand
        example.run(hand.world, "writing by hand", write, example.ref, hand, path)
        results = example.run(hand.world, "reading by hand", read, example.ref, hand, path)
        expected = {t.spec.key: ("tensor", tuple(t.spec.shape), t.spec.dtype) for t in hand.tensors}
        expected.update({key: ("bytes",) for key, _, _ in hand.objects})
        summaries = [r["summary"] for r in results]
        _check_metadata(example, expected, summaries, "after a save by hand")
        mismatches = [m for r in results for m in r["mismatches"]]
        if mismatches:
            raise example.fail(
                f"{len(mismatches)} value(s) read back by hand differ from what was written",
                _listing(mismatches),
            )

    @pytest.mark.ckpt_level("core")
    @given(data=st.data())
    def test_resave_same_keys_new_values(self, backend, ckpt_path, ckpt_repro, data):
        """Save v1, then v2 (same keys and shapes, other values) to the same path: the path
        holds exactly v2; save v1 again: exactly v1."""
        first = data.draw(_cases(backend), label="v1")
        self._resave(backend, first, _resalted(first), ckpt_path(), ckpt_repro)

    @pytest.mark.ckpt_level("core")
    @given(data=st.data())
    def test_resave_other_keys_and_shapes(self, backend, ckpt_path, ckpt_repro, data):
        """Save v1, then v2 (other keys, some old keys with new shapes and dtypes, maybe on
        another number of ranks) to the same path: the metadata lists exactly v2's keys
        (no stale key or chunk of v1) and a load gives v2; then v1 again."""
        first = data.draw(_cases(backend), label="v1")
        second = data.draw(_other_case(backend, first), label="v2")
        self._resave(backend, first, second, ckpt_path(), ckpt_repro)

    def _resave(self, backend, first: SaveLoadCase, second: SaveLoadCase, path, repro) -> None:
        example = _Example(backend, f"v1: {first.describe()}\nv2: {second.describe()}", repro)
        for number, (case, name) in enumerate(((first, "v1"), (second, "v2"), (first, "v1"))):
            what = f"save {number + 1} ({name})"
            example.run(case.save_world, what, rank_ops.save_case, example.ref, case, path)
            if number:
                _check_checkpoint(example, case, path, f"after {what} over the previous one")

    @pytest.mark.ckpt_level("core")
    @given(data=st.data())
    def test_sibling_checkpoints_saved_concurrently(self, backend, ckpt_path, ckpt_repro, data):
        """Two checkpoints under one parent (``step_1`` and ``step_10``) saved at the same time
        by the same ranks, each save in its own thread on its own gloo process group
        (rank_ops_storage.save_siblings_concurrently says why that is sound): each holds
        exactly its own state, keys and values."""
        first = data.draw(_cases(backend), label="first")
        if data.draw(st.booleans(), label="same keys"):
            second = _resalted(first)
        else:
            other = data.draw(_cases(backend, worlds=(first.save_world,)), label="second")
            second = _resalted(other, salt=500)
        parent = ckpt_path()
        os.makedirs(parent)
        paths = [os.path.join(parent, name) for name in _SIBLING_NAMES]
        text = f"{paths[0]}: {first.describe()}\n{paths[1]}: {second.describe()}"
        example = _Example(backend, text, ckpt_repro)
        save = rank_ops_storage.save_siblings_concurrently
        args = (example.ref, first, paths[0], second, paths[1])
        example.run(first.save_world, "two concurrent saves", save, *args)
        for case, path in ((first, paths[0]), (second, paths[1])):
            _check_checkpoint(example, case, path, f"from {path} after the concurrent saves")

    @pytest.mark.ckpt_level("core")
    @given(data=st.data())
    def test_short_read_is_an_error(self, backend, ckpt_path, ckpt_repro, data):
        """A data file cut short inside the saved bytes of a chunk (bytes found nowhere else)
        fails the load on every rank: never zeros or stale values in the destination.

        core, not strict: this needs no checksum. A reader knows how many bytes it asks
        for (the metadata records every item's length, or its shape and dtype), so data
        that comes back short is detectable by any correct backend. If no saved bytes can
        be found in the files (a backend that compresses), the last bytes of a file are
        cut instead, and the load must raise or give the saved values."""
        case = data.draw(_sized_cases(backend), label="case")
        example, path = _Example(backend, case.describe(), ckpt_repro), ckpt_path()
        files, summary = _saved(example, case, path)
        unique = [s for s in data_spans(path, files, case, summary) if s.unique]
        drop = data.draw(st.integers(1, 16), label="bytes dropped")
        if unique:
            span = _pick(data, unique, "chunk cut")
            drop = min(drop, span.end - span.start)
            before = truncate_file(path, span.file, span.end - drop)
            change = (
                f"{span.file!r} cut from {before} to {span.end - drop} bytes: the last {drop} "
                f"byte(s) of {span.label} (file bytes [{span.start}, {span.end})) and all after"
            )
        else:
            file = _pick(data, nonempty_files(path, files), "file")
            size = os.path.getsize(os.path.join(path, file))
            drop = min(drop, size)
            truncate_file(path, file, size - drop)
            change = f"{file!r} cut from {size} to {size - drop} bytes (no saved bytes found)"
        _check_corrupted_load(example, case, path, change, must_raise=bool(unique))

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("integrity")
    @given(data=st.data())
    def test_flipped_bit_is_an_error_or_harmless(self, backend, ckpt_path, ckpt_repro, data):
        """One bit flipped in one file of the checkpoint (half the draws inside a chunk's saved
        bytes, found by their values): the load raises on every rank or gives exactly the
        saved values."""
        case = data.draw(_sized_cases(backend), label="case")
        example, path = _Example(backend, case.describe(), ckpt_repro), ckpt_path()
        files, summary = _saved(example, case, path)
        spans = data_spans(path, files, case, summary)
        if data.draw(st.booleans(), label="inside saved bytes") and spans:
            span = _pick(data, spans, "chunk")
            file, offset = span.file, _pick(data, range(span.start, span.end), "byte")
        else:
            file = _pick(data, nonempty_files(path, files), "file")
            offset = _pick(data, range(os.path.getsize(os.path.join(path, file))), "byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        old = set_byte(path, file, offset, lambda b: b ^ (1 << bit))
        change = (
            f"bit {bit} of byte {offset} of {file!r} flipped (0x{old:02x} -> "
            f"0x{old ^ (1 << bit):02x}), {describe_offset(spans, file, offset)}"
        )
        _check_corrupted_load(example, case, path, change, must_raise=False)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("integrity")
    @given(data=st.data())
    def test_truncated_file_is_an_error_or_harmless(self, backend, ckpt_path, ckpt_repro, data):
        """Any file of the checkpoint (metadata included) truncated to 0 bytes or cut at any
        point: the load raises on every rank or gives exactly the saved values."""
        case = data.draw(_sized_cases(backend), label="case")
        example, path = _Example(backend, case.describe(), ckpt_repro), ckpt_path()
        files, summary = _saved(example, case, path)
        spans = data_spans(path, files, case, summary)
        file = _pick(data, files, "file")
        size = os.path.getsize(os.path.join(path, file))
        to_zero = data.draw(st.booleans(), label="to zero")
        keep = 0 if to_zero or size == 0 else _pick(data, range(size), "bytes kept")
        truncate_file(path, file, keep)
        change = f"{file!r} truncated from {size} to {keep} bytes (at {describe_offset(spans, file, keep)})"
        _check_corrupted_load(example, case, path, change, must_raise=False)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("integrity")
    @given(data=st.data())
    def test_deleted_file_is_an_error_or_harmless(self, backend, ckpt_path, ckpt_repro, data):
        """Any one file of the checkpoint deleted: the load raises on every rank or gives
        exactly the saved values (the file was not needed)."""
        case = data.draw(_sized_cases(backend), label="case")
        example, path = _Example(backend, case.describe(), ckpt_repro), ckpt_path()
        files, _ = _saved(example, case, path)
        file = _pick(data, files, "file")
        os.remove(os.path.join(path, file))
        change = f"{file!r} deleted (the checkpoint had {files})"
        _check_corrupted_load(example, case, path, change, must_raise=False)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("integrity")
    @settings(phases=_NO_SHRINK)  # an example probes the metadata: seconds; cases are small
    @given(data=st.data())
    def test_tampered_metadata_is_an_error_or_harmless(self, backend, ckpt_path, ckpt_repro, data):
        """A metadata file (one without which ``read_metadata`` fails or says something else)
        changed outside the saved tensor bytes, one of three ways (see ``_metadata_change``):
        a change the reader accepts and that changes what it says, an ASCII digit replaced
        by another, any bit flipped. The load raises on every rank or gives exactly the
        saved values."""
        case = data.draw(_sized_cases(backend), label="case")
        example, path = _Example(backend, case.describe(), ckpt_repro), ckpt_path()
        files, summary = _saved(example, case, path)
        hide_dir = f"{path}.hidden"
        os.makedirs(hide_dir)
        depends = rank_ops_storage.files_metadata_depends_on
        found = example.run(
            1,
            "read_metadata without each file",
            depends,
            example.ref,
            path,
            files,
            hide_dir,
        )
        metadata_files = nonempty_files(path, found[0])
        if not metadata_files:
            pytest.skip("no file of the checkpoint changes what read_metadata returns")
        file = _pick(data, metadata_files, "metadata file")
        spans = [s for s in data_spans(path, files, case, summary) if s.file == file]
        offset, change, what = _metadata_change(data, example, path, file, spans, summary)
        old = set_byte(path, file, offset, change)
        context = Path(path, file).read_bytes()[max(0, offset - 24) : offset + 24]
        description = (
            f"byte {offset} of metadata file {file!r}: {what} (0x{old:02x} -> 0x{change(old):02x});"
            f" the bytes around it now: {context!r}"
        )
        _check_corrupted_load(example, case, path, description, must_raise=False)


def _metadata_change(data, example: _Example, path: str, file: str, spans: list[DataSpan], summary):
    """``(offset, change, what)``: a byte of ``file`` outside ``spans`` and how to change it.

    Three ways, drawn: a change the reader accepts and that changes what it says (found
    by probing bit 0 or 1 of every byte, up to 4096: that turns most digits into other
    digits and changes a binary integer by 1 or 2), preferring changes that leave part
    of a tensor in no chunk, then other changes of chunks, of keys, sizes or dtypes, of
    where the data lies; an ASCII digit replaced by another; any bit flipped.
    """
    content = Path(path, file).read_bytes()
    inside = {i for s in spans for i in range(s.start, s.end)}
    outside = [i for i in range(len(content)) if i not in inside] or list(range(len(content)))
    mode = data.draw(st.sampled_from(["accepted", "accepted", "digit", "bit"]), label="change")
    if mode == "accepted":
        window = outside
        if len(outside) > _MAX_PROBED:
            start = _pick(data, range(len(outside) - _MAX_PROBED), "probed window")
            window = outside[start : start + _MAX_PROBED]
        mask = data.draw(st.sampled_from([1, 2]), label="bit probed")
        probe = rank_ops_storage.accepted_metadata_changes
        found = example.run(
            1,
            "read_metadata of tampered metadata",
            probe,
            example.ref,
            path,
            file,
            window,
            mask,
        )[0]
        by_kind: dict[str, list[int]] = {}
        for position, after in found:
            by_kind.setdefault(_what_changed(summary, after), []).append(position)
        kinds = ["gap", "gap", "chunks", "layout", "location"]
        first = data.draw(st.sampled_from(kinds), label="what the change changes")
        accepted = next((by_kind[k] for k in [first, *kinds] if by_kind.get(k)), [])
        if accepted:
            what = f"bit {mask.bit_length() - 1} flipped, a change read_metadata accepts"
            return _pick(data, accepted, "accepted byte"), lambda b: b ^ mask, what
    digits = [i for i in outside if 48 <= content[i] <= 57]
    if mode == "digit" and digits:
        plus = data.draw(st.integers(1, 9), label="plus")
        offset = _pick(data, digits, "digit")
        return (
            offset,
            lambda b: 48 + (b - 48 + plus) % 10,
            f"digit changed (+{plus} mod 10)",
        )
    bit = data.draw(st.integers(0, 7), label="bit")
    return _pick(data, outside, "byte"), lambda b: b ^ (1 << bit), f"bit {bit} flipped"
