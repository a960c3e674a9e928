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

import math
import os
from collections.abc import Sequence

import pytest
from hypothesis import Phase
from hypothesis import strategies as st

from ...kit import values
from ...kit.cases import SaveLoadCase, resalted
from ...kit.failures import listing
from ...kit.layouts import layout_examples
from ...kit.oracle import cover_problems, metadata_problems
from ...kit.outcomes import unsupported
from ...kit.profiles import property_test
from ...kit.trial import Trial
from ...stored import StoredObjects
from . import ranks
from .cases import MAX_SIDE, flat_cases, hand_cases, other_cases, sized_cases
from .files import (
    DataSpan,
    data_spans,
    describe_offset,
    nonempty_files,
    truncate_file,
)

__all__ = ["StorageTests"]

TIMEOUT = 60.0
PROBE_SECONDS = {"ci": 2.0, "dev": 4.0, "thorough": 15.0}
"""Seconds an example probes metadata bytes for changes the reader accepts, by profile: a
probe is a read_metadata (and two writes), a millisecond on a local disk, a tenth of a second
or more on an object store, so the bound is time, not a count of bytes."""
_SCALE = 1 << 16
_NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
# one name a prefix of the other: a reader that lists by prefix mixes the two up
_SIBLING_NAMES = ("step_1", "step_10")


# --- metadata checks ---------------------------------------------------------------------------


def _expected_entries(case: SaveLoadCase) -> dict:
    """What the metadata of ``case``'s checkpoint must list: tensors, and objects (``None``)."""
    out: dict = {s.key: (tuple(s.shape), s.dtype) for s in case.tensors}
    out.update({key: None for key, _ in case.objects})
    return out


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
        for p in cover_problems(key, entry["size"], [(c, "metadata") for c in entry["chunks"]])
    ]
    only_gaps = problems and all("covered by none" in p for p in problems)
    return "gap" if only_gaps else "chunks"


def _check_metadata(trial: Trial, expected: dict, summaries: list[dict], when: str) -> None:
    """Fail if any rank's metadata summary differs from ``expected`` (or from rank 0's)."""
    problems = [f"rank 0: {p}" for p in metadata_problems(expected, summaries[0])]
    problems += [
        f"rank {r} reads other metadata than rank 0: {s}"
        for r, s in enumerate(summaries)
        if s != summaries[0]
    ]
    if problems:
        raise trial.fail(
            f"the metadata read back {when} does not match the saved state",
            listing(problems, 12),
            kind="wrong_values",
        )


def _check_checkpoint(trial: Trial, case: SaveLoadCase, path: str, when: str) -> None:
    """The checkpoint at ``path`` holds exactly ``case``: metadata first, then loaded values."""
    world = case.save_world
    summaries = trial.run(f"read_metadata {when}", ranks.read_metadata_summary, path, world=world)
    _check_metadata(trial, _expected_entries(case), summaries, when)
    loaded = trial.run(f"load {when}", values.load_case, case, path, world=world)
    trial.check_values(
        [m for r in loaded for m in r], f"value(s) loaded {when} differ from the last state saved"
    )


# --- the checkpoint's files ----------------------------------------------------------------------


def _saved(trial: Trial, case: SaveLoadCase, path: str) -> tuple[StoredObjects, list[str], dict]:
    """Save ``case``; return what the backend stored, the stored objects' names and rank 0's
    metadata summary."""
    trial.run("save", values.save_case, case, path, world=case.save_world)
    store = trial.backend.objects_at(path)
    files = store.names()
    if not files:
        how = (
            "its stored_objects lists nothing"
            if trial.backend.stored_objects is not None
            else "a backend that stores elsewhere (an object store) gives the suite a "
            "stored_objects factory (ckptconf.conformance.StoredObjects)"
        )
        unsupported(f"it stored nothing found at {store.where()}: {how}")
    summary = trial.run("read_metadata", ranks.read_metadata_summary, path, world=1)[0]
    return store, files, summary


def _pick(data, items: Sequence, label: str):
    """One of ``items``, drawn as a fraction of its length rather than an index: the files'
    sizes vary a little between runs (paths and ids in them), and hypothesis must draw
    with the same bounds when it replays an example."""
    return items[data.draw(st.integers(0, _SCALE - 1), label=label) * len(items) // _SCALE]


def _check_corrupted_load(
    trial: Trial, case: SaveLoadCase, path: str, change: str, *, must_raise: bool
) -> None:
    """Load after ``change``: every rank raises, or (unless ``must_raise``) every value is right."""
    trial = trial.about(f"{trial.case}\ncorruption: {change}")
    outcomes = trial.run(
        "load (of the corrupted checkpoint)", ranks.load_outcome, case, path, world=case.save_world
    )
    raised = [r for r, o in enumerate(outcomes) if o["raised"]]
    quiet = [r for r, o in enumerate(outcomes) if not o["raised"]]
    if not quiet:
        return
    errors = "\n".join(f"  rank {r} raised {outcomes[r]['error'][:600]}" for r in raised)
    wrong = [m for r in quiet for m in outcomes[r]["mismatches"]]
    if wrong:
        raise trial.fail(
            f"a corrupted checkpoint loaded without error on rank(s) {quiet}, with wrong values",
            listing(wrong) + ("\n" + errors if errors else ""),
            kind="wrong_values",
            mismatch=wrong[0],
        )
    if raised:
        raise trial.fail(
            f"rank(s) {raised} raised loading a corrupted checkpoint, rank(s) {quiet} returned "
            "normally",
            errors,
            kind="wrong_error",
            errors=tuple(dict.fromkeys(outcomes[r]["error"][:3000] for r in raised)),
            rank=quiet[0],
        )
    if must_raise:
        raise trial.fail(
            "the load returned without error although bytes it must read are missing",
            "  every rank returned normally, with the saved values: the bytes lost were zeros "
            "(a zero fill restores them) or were read from somewhere else",
            kind="no_error",
        )


# --- the suite ---------------------------------------------------------------------------------

_FLAT = dict(same_layout=True, max_side=MAX_SIDE, objects=True)
""":func:`~.cases.flat_cases`' options, for its pinned examples."""


_FLAT_PINS = layout_examples(**_FLAT)
_SIZED_PINS = layout_examples(
    same_layout=True,
    max_side=MAX_SIDE,
    min_dims=1,
    allow_empty=False,
    keep=lambda c: math.prod(c.tensors[0].shape) >= 2,
    combined=True,
    max_tensors=2,
)
"""Pinned examples of :func:`~.cases.sized_cases` (tensors of 2 elements or more), each
world's layouts in one case: an example corrupts and probes files, which costs seconds."""


@pytest.mark.ckpt_suite("storage")
@pytest.mark.ckpt_requires("storage")
class StorageTests:
    """The backend's storage: metadata, re-saves, siblings, and corrupted files."""

    @pytest.mark.ckpt_level("core")
    @property_test(pinned=_FLAT_PINS)
    def test_metadata_matches_the_saved_state(self, ckpt, data):
        """After a save, ``storage_reader(path).read_metadata()`` on every rank lists every key
        saved and no other: tensors with their size, dtype and chunks tiling them exactly,
        objects as ``BytesStorageMetadata``."""
        case = data.draw(flat_cases(ckpt.backend), label="case")
        trial, path = ckpt.trial(case), ckpt.path()
        trial.run("save", values.save_case, case, path, world=case.save_world)
        read = ranks.read_metadata_summary
        summaries = trial.run("read_metadata", read, path, world=case.save_world)
        _check_metadata(trial, _expected_entries(case), summaries, "after a save")

    @pytest.mark.ckpt_level("core")
    @property_test()
    def test_storage_protocol_by_hand(self, ckpt, data):
        """The backend's StorageWriter driven through DCP's save protocol by hand (the test is
        the planner: set_up_storage_writer, prepare_local_plan, prepare_global_plan,
        write_data, finish with metadata built from the WriteResults), then its
        StorageReader the same way: the metadata lists exactly what was written and every
        chunk it lists reads back with its values, on every rank."""
        hand = data.draw(hand_cases(ckpt.backend), label="hand case")
        trial, path = ckpt.trial(hand), ckpt.path()
        write, read = ranks.write_by_hand, ranks.read_by_hand
        trial.run("write (the storage protocol by hand)", write, hand, path, world=hand.world)
        results = trial.run(
            "read (the storage protocol by hand)", read, hand, path, world=hand.world
        )
        expected: dict = {t.spec.key: (tuple(t.spec.shape), t.spec.dtype) for t in hand.tensors}
        expected.update({key: None for key, _, _ in hand.objects})
        summaries = [r["summary"] for r in results]
        _check_metadata(trial, expected, summaries, "after a save by hand")
        trial.check_values(
            [m for r in results for m in r["mismatches"]],
            "value(s) read back by hand differ from what was written",
        )

    @pytest.mark.ckpt_level("core")
    @property_test(pinned=layout_examples(**_FLAT, label="v1"))
    def test_resave_same_keys_new_values(self, ckpt, data):
        """Save v1, then v2 (same keys and shapes, other values) to the same path: the path
        holds exactly v2; save v1 again: exactly v1."""
        first = data.draw(flat_cases(ckpt.backend), label="v1")
        self._resave(ckpt, first, resalted(first))

    @pytest.mark.ckpt_level("core")
    @property_test(pinned=layout_examples(**_FLAT, label="v1"))
    def test_resave_other_keys_and_shapes(self, ckpt, data):
        """Save v1, then v2 (other keys, some old keys with new shapes and dtypes, maybe on
        another number of ranks) to the same path: the metadata lists exactly v2's keys
        (no stale key or chunk of v1) and a load gives v2; then v1 again."""
        first = data.draw(flat_cases(ckpt.backend), label="v1")
        second = data.draw(other_cases(ckpt.backend, first), label="v2")
        self._resave(ckpt, first, second)

    @staticmethod
    def _resave(ckpt, first: SaveLoadCase, second: SaveLoadCase) -> None:
        trial = ckpt.trial(f"v1: {first.describe()}\nv2: {second.describe()}")
        path = ckpt.path()
        for number, (case, name) in enumerate(((first, "v1"), (second, "v2"), (first, "v1"))):
            what = f"save (number {number + 1}: {name})"
            trial.run(what, values.save_case, case, path, world=case.save_world)
            if number:
                _check_checkpoint(trial, case, path, f"after {what} over the previous one")

    @pytest.mark.ckpt_level("core")
    @property_test(pinned=layout_examples(**_FLAT, label="first"))
    def test_sibling_checkpoints_saved_concurrently(self, ckpt, data):
        """Two checkpoints under one parent (``step_1`` and ``step_10``) saved at the same time
        by the same ranks, each save in its own thread on its own gloo process group
        (ranks.save_siblings_concurrently says why that is sound): each holds
        exactly its own state, keys and values."""
        first = data.draw(flat_cases(ckpt.backend), label="first")
        if data.draw(st.booleans(), label="same keys"):
            second = resalted(first)
        else:
            other = data.draw(flat_cases(ckpt.backend, worlds=(first.save_world,)), label="second")
            second = resalted(other, salt=500)
        parent = ckpt.path()
        os.makedirs(parent)
        paths = [os.path.join(parent, name) for name in _SIBLING_NAMES]
        trial = ckpt.trial(f"{paths[0]}: {first.describe()}\n{paths[1]}: {second.describe()}")
        save = ranks.save_siblings_concurrently
        trial.run(
            "save (two, concurrently)",
            save,
            first,
            paths[0],
            second,
            paths[1],
            world=first.save_world,
        )
        for case, path in ((first, paths[0]), (second, paths[1])):
            _check_checkpoint(trial, case, path, f"from {path} after the concurrent saves")

    @pytest.mark.ckpt_level("core")
    @property_test(pinned=_SIZED_PINS)
    def test_short_read_is_an_error(self, ckpt, data):
        """A data file cut short inside the saved bytes of a chunk (bytes found nowhere else)
        fails the load on every rank: never zeros or stale values in the destination.

        core, not strict: this needs no checksum. A reader knows how many bytes it asks
        for (the metadata records every item's length, or its shape and dtype), so data
        that comes back short is detectable by any correct backend. If no saved bytes can
        be found in the files (a backend that compresses), the last bytes of a file are
        cut instead, and the load must raise or give the saved values."""
        case = data.draw(sized_cases(ckpt.backend), label="case")
        trial, path = ckpt.trial(case), ckpt.path()
        store, files, summary = _saved(trial, case, path)
        unique = [s for s in data_spans(store, files, case, summary) if s.unique]
        drop = data.draw(st.integers(1, 16), label="bytes dropped")
        if unique:
            span = _pick(data, unique, "chunk cut")
            drop = min(drop, span.end - span.start)
            before = truncate_file(store, span.file, span.end - drop)
            change = (
                f"{span.file!r} cut from {before} to {span.end - drop} bytes: the last {drop} "
                f"byte(s) of {span.label} (file bytes [{span.start}, {span.end})) and all after"
            )
        else:
            file = _pick(data, nonempty_files(store, files), "file")
            size = store.size(file)
            drop = min(drop, size)
            truncate_file(store, file, size - drop)
            change = f"{file!r} cut from {size} to {size - drop} bytes (no saved bytes found)"
        _check_corrupted_load(trial, case, path, change, must_raise=bool(unique))

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("integrity")
    @property_test(pinned=_SIZED_PINS)
    def test_flipped_bit_is_an_error_or_harmless(self, ckpt, data):
        """One bit flipped in one file of the checkpoint (half the draws inside a chunk's saved
        bytes, found by their values): the load raises on every rank or gives exactly the
        saved values."""
        case = data.draw(sized_cases(ckpt.backend), label="case")
        trial, path = ckpt.trial(case), ckpt.path()
        store, files, summary = _saved(trial, case, path)
        spans = data_spans(store, files, case, summary)
        if data.draw(st.booleans(), label="inside saved bytes") and spans:
            span = _pick(data, spans, "chunk")
            file, offset = span.file, _pick(data, range(span.start, span.end), "byte")
        else:
            file = _pick(data, nonempty_files(store, files), "file")
            offset = _pick(data, range(store.size(file)), "byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        old = store.change_byte(file, offset, lambda b: b ^ (1 << bit))
        change = (
            f"bit {bit} of byte {offset} of {file!r} flipped (0x{old:02x} -> "
            f"0x{old ^ (1 << bit):02x}), {describe_offset(spans, file, offset)}"
        )
        _check_corrupted_load(trial, case, path, change, must_raise=False)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("integrity")
    @property_test(pinned=_SIZED_PINS)
    def test_truncated_file_is_an_error_or_harmless(self, ckpt, data):
        """Any file of the checkpoint (metadata included) truncated to 0 bytes or cut at any
        point: the load raises on every rank or gives exactly the saved values."""
        case = data.draw(sized_cases(ckpt.backend), label="case")
        trial, path = ckpt.trial(case), ckpt.path()
        store, files, summary = _saved(trial, case, path)
        spans = data_spans(store, files, case, summary)
        file = _pick(data, files, "file")
        size = store.size(file)
        to_zero = data.draw(st.booleans(), label="to zero")
        keep = 0 if to_zero or size == 0 else _pick(data, range(size), "bytes kept")
        truncate_file(store, file, keep)
        change = f"{file!r} truncated from {size} to {keep} bytes (at {describe_offset(spans, file, keep)})"
        _check_corrupted_load(trial, case, path, change, must_raise=False)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("integrity")
    @property_test(pinned=_SIZED_PINS)
    def test_deleted_file_is_an_error_or_harmless(self, ckpt, data):
        """Any one file of the checkpoint deleted: the load raises on every rank or gives
        exactly the saved values (the file was not needed)."""
        case = data.draw(sized_cases(ckpt.backend), label="case")
        trial, path = ckpt.trial(case), ckpt.path()
        store, files, _ = _saved(trial, case, path)
        file = _pick(data, files, "file")
        store.delete(file)
        change = f"{file!r} deleted (the checkpoint had {files})"
        _check_corrupted_load(trial, case, path, change, must_raise=False)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("integrity")
    # an example probes the metadata: seconds; cases are small
    @property_test(phases=_NO_SHRINK, pinned=_SIZED_PINS)
    def test_tampered_metadata_is_an_error_or_harmless(self, ckpt, data):
        """A metadata file (one without which ``read_metadata`` fails or says something else)
        changed outside the saved tensor bytes, one of three ways (see ``_metadata_change``):
        a change the reader accepts and that changes what it says, an ASCII digit replaced
        by another, any bit flipped. The load raises on every rank or gives exactly the
        saved values."""
        case = data.draw(sized_cases(ckpt.backend), label="case")
        trial, path = ckpt.trial(case), ckpt.path()
        store, files, summary = _saved(trial, case, path)
        depends = ranks.files_metadata_depends_on
        found = trial.run("read_metadata (without each file)", depends, path, files, world=1)
        metadata_files = nonempty_files(store, found[0])
        if not metadata_files:
            unsupported("no file of the checkpoint changes what read_metadata returns")
        file = _pick(data, metadata_files, "metadata file")
        spans = [s for s in data_spans(store, files, case, summary) if s.file == file]
        seconds = PROBE_SECONDS[ckpt.session.profile]
        offset, change, what = _metadata_change(
            data, trial, store, path, file, spans, summary, seconds
        )
        old = store.change_byte(file, offset, change)
        context = store.read(file)[max(0, offset - 24) : offset + 24]
        description = (
            f"byte {offset} of metadata file {file!r}: {what} (0x{old:02x} -> 0x{change(old):02x});"
            f" the bytes around it now: {context!r}"
        )
        _check_corrupted_load(trial, case, path, description, must_raise=False)


def _metadata_change(
    data,
    trial: Trial,
    store: StoredObjects,
    path: str,
    file: str,
    spans: list[DataSpan],
    summary,
    seconds: float,
):
    """``(offset, change, what)``: a byte of ``file`` outside ``spans`` and how to change it.

    Three ways, drawn: a change the reader accepts and that changes what it says (found
    by probing bit 0 or 1 of each byte from a drawn one on, for ``seconds``: that turns
    most digits into other digits and changes a binary integer by 1 or 2), preferring changes that leave part
    of a tensor in no chunk, then other changes of chunks, of keys, sizes or dtypes, of
    where the data lies; an ASCII digit replaced by another; any bit flipped.
    """
    content = store.read(file)
    inside = {i for s in spans for i in range(s.start, s.end)}
    outside = [i for i in range(len(content)) if i not in inside] or list(range(len(content)))
    mode = data.draw(st.sampled_from(["accepted", "accepted", "digit", "bit"]), label="change")
    if mode == "accepted":
        start = _pick(data, range(len(outside)), "first byte probed")
        window = outside[start:] + outside[:start]  # from there on, for PROBE_SECONDS
        mask = data.draw(st.sampled_from([1, 2]), label="bit probed")
        probe = ranks.accepted_metadata_changes
        found = trial.run(
            "read_metadata (of tampered metadata)",
            probe,
            path,
            file,
            window,
            mask,
            seconds,
            world=1,
        )[0]
        by_kind: dict[str, list[int]] = {}
        for position, after in found:
            by_kind.setdefault(_what_changed(summary, after), []).append(position)
        kinds = ["gap", "gap", "chunks", "layout", "location"]
        first = data.draw(st.sampled_from(kinds), label="what the change changes")
        accepted = next((by_kind[k] for k in [first, *kinds] if by_kind.get(k)), [])
        if accepted:  # the first in probe order: how many were found depends on the time
            what = f"bit {mask.bit_length() - 1} flipped, a change read_metadata accepts"
            return accepted[0], lambda b: b ^ mask, what
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
