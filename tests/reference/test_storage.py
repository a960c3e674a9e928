"""Storage: raw ranged reads, checksums, truncation, atomic commit, generations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from ckptconf.harness.simulated import index_encoded, mesh_values, simulate_load, simulate_save
from ckptconf.reference import (
    CheckpointError,
    FileSystemReader,
    FileSystemWriter,
    InMemoryReader,
    InMemoryWriter,
    MemoryStore,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
    load,
    save,
)
from ckptconf.reference.filesystem import METADATA_FILE
from torch.distributed.tensor import Shard


def state(seed: float = 0.0):
    return {
        "w": torch.arange(64, dtype=torch.float32).reshape(8, 8) + seed,
        "b": torch.arange(5, dtype=torch.int64) * 3 + int(seed),
        "opt": {"step": int(seed), "betas": (0.9, 0.99)},
        "blob": b"bytes" + bytes([int(seed)]),
    }


def empty_like(sd):
    return {
        "w": torch.zeros(8, 8),
        "b": torch.zeros(5, dtype=torch.int64),
        "opt": {"step": None, "betas": None},
        "blob": None,
    }


def assert_state_equal(actual, expected):
    assert torch.equal(actual["w"], expected["w"])
    assert torch.equal(actual["b"], expected["b"])
    assert actual["opt"] == expected["opt"]
    assert actual["blob"] == expected["blob"]


def test_filesystem_round_trip_and_layout(tmp_path):
    save(state(1), tmp_path / "ck")
    names = sorted(os.listdir(tmp_path / "ck"))
    assert names[0] == METADATA_FILE and names[1].startswith("gen-") and len(names) == 2
    dest = empty_like(state())
    load(dest, tmp_path / "ck")
    assert_state_equal(dest, state(1))


def test_memory_round_trip():
    store = MemoryStore()
    save(state(2), storage_writer=InMemoryWriter(store))
    dest = empty_like(state())
    load(dest, storage_reader=InMemoryReader(store))
    assert_state_equal(dest, state(2))


def test_resave_replaces_the_checkpoint_and_drops_old_generations(tmp_path):
    path = tmp_path / "ck"
    save(state(1), path)
    first = {n for n in os.listdir(path) if n.startswith("gen-")}
    save(state(2), path)
    second = {n for n in os.listdir(path) if n.startswith("gen-")}
    assert len(second) == 1 and not (first & second)
    dest = empty_like(state())
    load(dest, path)
    assert_state_equal(dest, state(2))


class CountingStore(MemoryStore):
    """A memory store that records every range read."""

    def __init__(self):
        super().__init__()
        self.reads: list[tuple[str, int, int]] = []

    def read_range(self, name, start, end):
        self.reads.append((name, start, end))
        return super().read_range(name, start, end)


def test_a_resharding_load_reads_only_the_blocks_it_needs():
    # 64 rows of 16 float32 (64 bytes per row), saved whole; load one row-slab on 4 ranks
    store = CountingStore()
    full = torch.arange(64 * 16, dtype=torch.float32).reshape(64, 16)
    save({"t": full}, storage_writer=InMemoryWriter(store, block_size=256))
    dests = [{"t": v} for v in mesh_values("t", (64, 16), (4,), [Shard(0)])]
    store.reads.clear()
    simulate_load(dests, ReferenceLoadPlanner, lambda r: InMemoryReader(store))
    read_bytes = sum(end - start for _, start, end in store.reads)
    assert read_bytes == full.numel() * 4  # every byte once, none twice
    assert len(store.reads) == 4
    for rank, dest in enumerate(dests):
        torch.testing.assert_close(
            dest["t"].pieces[0].view, full[rank * 16 : (rank + 1) * 16], rtol=0, atol=0
        )


def test_a_column_slice_reads_a_bounded_span():
    store = CountingStore()
    full = torch.arange(64 * 16, dtype=torch.float32).reshape(64, 16)
    save({"t": full}, storage_writer=InMemoryWriter(store, block_size=64))
    dest = [{"t": mesh_values("t", (64, 16), (4,), [Shard(0)])[0]}]
    store.reads.clear()
    simulate_load(dest, ReferenceLoadPlanner, lambda r: InMemoryReader(store))
    assert sum(e - s for _, s, e in store.reads) == 16 * 16 * 4  # rows 0..15 only


def _data_files(path):
    return [
        os.path.join(root, f)
        for root, _, files in os.walk(path)
        for f in files
        if f.endswith(".bin")
    ]


def test_a_flipped_bit_is_an_integrity_error_naming_the_key(tmp_path):
    path = tmp_path / "ck"
    save({"w": torch.arange(100, dtype=torch.float32)}, path)
    (data,) = _data_files(path)
    raw = bytearray(Path(data).read_bytes())
    raw[17] ^= 0x10
    Path(data).write_bytes(bytes(raw))
    dest = {"w": torch.zeros(100)}
    with pytest.raises(CheckpointError, match=r"checksum mismatch for key 'w' at offsets \(0,\)"):
        load(dest, path)
    assert torch.equal(dest["w"], torch.zeros(100))


def test_checksums_can_be_turned_off_for_reads(tmp_path):
    path = tmp_path / "ck"
    save({"w": torch.arange(10, dtype=torch.float32)}, path)
    (data,) = _data_files(path)
    raw = bytearray(Path(data).read_bytes())
    raw[0:4] = torch.tensor([42.0]).numpy().tobytes()
    Path(data).write_bytes(bytes(raw))
    dest = {"w": torch.zeros(10)}
    load(dest, storage_reader=FileSystemReader(path, verify_checksums=False))
    assert dest["w"][0] == 42.0


def test_truncated_and_missing_data_files_are_reported_before_reading(tmp_path):
    path = tmp_path / "ck"
    save({"w": torch.arange(100, dtype=torch.float32)}, path)
    (data,) = _data_files(path)
    os.truncate(data, 50)
    with pytest.raises(
        CheckpointError, match=r"key 'w' at offsets \(0,\) needs bytes \[0, 400\).*has 50 bytes"
    ):
        load({"w": torch.zeros(100)}, path)
    os.remove(data)
    with pytest.raises(CheckpointError, match=r"data file .* of key 'w' is missing"):
        load({"w": torch.zeros(100)}, path)


def test_tampered_metadata_is_rejected(tmp_path):
    path = tmp_path / "ck"
    save({"w": torch.arange(4, dtype=torch.float32)}, path)
    doc = json.loads((path / METADATA_FILE).read_text())
    doc["tensors"][0]["size"] = [5]
    (path / METADATA_FILE).write_text(json.dumps(doc))
    with pytest.raises(
        CheckpointError,
        match=r"key 'w': 1 element\(s\) of the destination piece .* in no saved chunk",
    ):
        load({"w": torch.zeros(5)}, path)
    doc["tensors"][0]["chunks"][0]["sizes"] = [5]
    (path / METADATA_FILE).write_text(json.dumps(doc))
    with pytest.raises(
        CheckpointError, match=r"key 'w'\).chunks\[0\].region.length: 16 bytes, but .* need 20"
    ):
        load({"w": torch.zeros(5)}, path)


class FailingWriter(FileSystemWriter):
    """Writes half its items, then fails: a save that dies mid-way."""

    def write_data(self, plan, planner):
        items = plan.items[: len(plan.items) // 2]
        import dataclasses

        super().write_data(dataclasses.replace(plan, items=items), planner)
        raise OSError("disk full (injected)")


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "ck"
    save(state(1), path)
    before = (path / METADATA_FILE).read_bytes()
    with pytest.raises(CheckpointError, match=r"(?s)rank\(s\) \[0\].*disk full \(injected\)"):
        save(state(2), storage_writer=FailingWriter(path))
    assert (path / METADATA_FILE).read_bytes() == before
    dest = empty_like(state())
    load(dest, path)
    assert_state_equal(dest, state(1))
    # the next good save cleans up the abandoned generation
    save(state(3), path)
    assert len([n for n in os.listdir(path) if n.startswith("gen-")]) == 1


def test_no_checkpoint_and_a_dcp_checkpoint_are_told_apart(tmp_path):
    with pytest.raises(CheckpointError, match="no committed checkpoint"):
        load({"w": torch.zeros(1)}, tmp_path / "nothing")
    import torch.distributed.checkpoint as dcp
    from ckptconf.reference.compat import no_dist

    writer = dcp.FileSystemWriter(str(tmp_path / "dcp"))
    dcp.save({"w": torch.ones(1)}, storage_writer=writer, **no_dist(dcp.save))
    with pytest.raises(CheckpointError, match="torch DCP FileSystemWriter checkpoint"):
        load({"w": torch.zeros(1)}, tmp_path / "dcp")


def test_sibling_checkpoints_are_independent(tmp_path):
    save(state(1), tmp_path / "a")
    save(state(2), tmp_path / "b")
    da, db = empty_like(state()), empty_like(state())
    load(da, tmp_path / "a")
    load(db, tmp_path / "b")
    assert_state_equal(da, state(1))
    assert_state_equal(db, state(2))


def test_simulated_resharding_through_memory():
    full_shape = (9, 6)
    store = MemoryStore()
    sources = mesh_values(
        "t", full_shape, (3,), [Shard(0)], fill=index_encoded(full_shape), dtype=torch.float64
    )
    simulate_save(
        [{"t": v} for v in sources], ReferenceSavePlanner, lambda r: InMemoryWriter(store)
    )
    dests = mesh_values("t", full_shape, (2, 2), [Shard(1), Shard(0)], dtype=torch.float64)
    simulate_load([{"t": v} for v in dests], ReferenceLoadPlanner, lambda r: InMemoryReader(store))
    fill = index_encoded(full_shape)
    for dest in dests:
        for piece in dest.pieces:
            torch.testing.assert_close(
                piece.view,
                fill(tuple(piece.chunk.offsets), tuple(piece.chunk.sizes)),
                rtol=0,
                atol=0,
            )


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.zeros(3)[1::2],  # shape (1,), stride (2,): .contiguous() keeps the stride
        lambda: torch.zeros(2, 5)[:, 1:2],  # shape (2, 1) with a row stride of 5
        lambda: torch.zeros(4, 3).t(),
        lambda: torch.zeros(7)[2:5],  # a view at a storage offset
    ],
    ids=["size1-stride2", "column", "transpose", "offset"],
)
def test_noncontiguous_values_save_their_elements(tmp_path, make):
    """Found by the kinds suite: a size-1 dim with a stride other than 1 failed the byte view."""
    value = make()
    value.copy_(torch.arange(1, value.numel() + 1, dtype=value.dtype).reshape(value.shape))
    save({"v": value}, tmp_path / "ck")
    dest = {"v": torch.zeros(value.shape)}
    load(dest, tmp_path / "ck")
    assert torch.equal(dest["v"], value)


@pytest.fixture
def small_pieces(monkeypatch):
    """Threads' pieces of 32 KiB, files spread from 256 KiB and threads for any size, so small
    states show all three."""
    import ckptconf.reference.storage as storage

    monkeypatch.setattr(storage, "_PIECE_BYTES", 32 << 10)
    monkeypatch.setattr(storage, "_SPREAD_BYTES", 256 << 10)
    monkeypatch.setattr(storage, "_THREADED_BYTES", 0)


def _big_state():
    # items larger than a thread's piece and of several sizes, a non-contiguous one, an object
    return {
        "big": torch.arange(36 << 10, dtype=torch.float32),  # 144 KiB: pieces of 32 KiB
        "small": torch.arange(1000, dtype=torch.int16),
        "strided": torch.arange(60, dtype=torch.float64).reshape(6, 10).t(),
        "obj": {"step": 7},
    }


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_write_and_read_the_bytes_one_thread_writes(tmp_path, threads, small_pieces):
    """The data file is byte for byte the one a single thread writes, in plan order, and
    loads back through the threaded reader (pieces of a 144 KiB tensor on several threads)."""
    for name, n in (("one", 1), ("many", threads)):
        writer = FileSystemWriter(tmp_path / name, threads=n, block_size=4096)
        save(_big_state(), storage_writer=writer)
    (one,), (many,) = _data_files(tmp_path / "one"), _data_files(tmp_path / "many")
    assert Path(one).read_bytes() == Path(many).read_bytes()
    expected = _big_state()
    dest = {k: torch.zeros_like(v) for k, v in expected.items() if isinstance(v, torch.Tensor)}
    dest["strided"] = torch.zeros(10, 6, dtype=torch.float64)
    dest["obj"] = {"step": None}
    load(dest, storage_reader=FileSystemReader(tmp_path / "many", threads=threads))
    for key in ("big", "small", "strided"):
        assert torch.equal(dest[key], expected[key]), key
    assert dest["obj"] == {"step": 7}


def test_a_corrupt_block_read_in_place_is_zeroed_and_named(tmp_path):
    """A whole chunk is read into its destination in place: the block that fails its checksum
    (the second 4 MiB block here) is zeroed, the error names it, and the blocks before it hold
    verified data."""
    path = tmp_path / "ck"
    n = (8 << 20) // 4
    save({"w": torch.arange(n, dtype=torch.float32)}, path)
    (data,) = _data_files(path)
    with open(data, "r+b") as file:
        file.seek((4 << 20) + 100)
        file.write(b"\xff")
    dest = {"w": torch.full((n,), -1.0)}
    with pytest.raises(CheckpointError, match=r"key 'w' at offsets \(0,\): block 1 of its data"):
        load(dest, storage_reader=FileSystemReader(path, threads=1))
    half = n // 2
    assert torch.equal(dest["w"][:half], torch.arange(half, dtype=torch.float32))
    assert torch.equal(dest["w"][half:], torch.zeros(n - half))


def test_crc32_checkpoints_still_load_and_xxh3_is_the_default(tmp_path):
    save(state(2), storage_writer=FileSystemWriter(tmp_path / "old", checksum="crc32"))
    save(state(3), tmp_path / "new")
    old = json.loads((tmp_path / "old" / METADATA_FILE).read_text())
    new = json.loads((tmp_path / "new" / METADATA_FILE).read_text())
    assert (old["checksum"], new["checksum"]) == ("crc32", "xxh3_64")
    import zlib

    region = old["tensors"][0]["chunks"][0]["region"]
    (data,) = _data_files(tmp_path / "old")
    raw = Path(data).read_bytes()[region["offset"] : region["offset"] + region["length"]]
    assert region["checksums"] == [zlib.crc32(raw)]
    # a document from before 2026-11-30 names the list "crc32"
    for entry in old["tensors"] + old["objects"]:
        for place in entry.get("chunks", [entry]):
            place["region"]["crc32"] = place["region"].pop("checksums")
    (tmp_path / "old" / METADATA_FILE).write_text(json.dumps(old))
    dest = empty_like(state())
    load(dest, tmp_path / "old")
    assert_state_equal(dest, state(2))
    with pytest.raises(ValueError, match="checksum must be one of"):
        FileSystemWriter(tmp_path / "x", checksum="md5")


class _Deferred:
    """A future whose work runs when its result is asked for: what ran, and when, is then
    decided by the code under test, not by thread timing."""

    def __init__(self, fn):
        self.fn, self.ran = fn, False

    def result(self):
        if not self.ran:
            self.ran = True
            self.fn()

    def cancel(self):
        return False


class _DeferredPool:
    def submit(self, fn):
        return _Deferred(fn)

    def shutdown(self, **_):
        pass


def test_a_read_into_memory_in_flight_waits_for_it_and_others_do_not():
    """Reads into overlapping destinations (tied weights) run one after the other, each
    committed before the next starts; reads into other memory stay in flight together."""
    from ckptconf.reference.storage import _WholeChunkReads

    log = []

    class Planner:
        def commit_tensor(self, item, target):
            log.append(f"commit {item}")

    tied, other = torch.zeros(8), torch.zeros(8)
    with _WholeChunkReads(2, Planner()) as reads:
        reads.pool = _DeferredPool()
        reads.add("embed", tied, [lambda: log.append("read embed")])
        reads.add("other", other, [lambda: log.append("read other")])
        assert log == []  # both in flight
        reads.add("head", tied[2:6], [lambda: log.append("read head")])  # overlaps embed
        assert log == ["read embed", "commit embed", "read other", "commit other"]
    assert log[4:] == ["read head", "commit head"]


def test_tied_destinations_load_and_the_last_key_wins(tmp_path, small_pieces):
    path = tmp_path / "ck"
    save({"embed": torch.full((1024,), 1.0), "head": torch.full((1024,), 2.0)}, path)
    tied = torch.zeros(1024)
    load({"embed": tied, "head": tied}, storage_reader=FileSystemReader(path, threads=4))
    assert tied.unique().tolist() == [2.0]


def test_a_store_that_reads_its_own_way_is_read_on_the_calling_thread(tmp_path, small_pieces):
    from ckptconf.reference.filesystem import DirectoryStore

    class Own(DirectoryStore):
        calls: list = []

        def read_into(self, name, start, buffer):
            import threading

            self.calls.append(threading.current_thread().name)
            return super().read_into(name, start, buffer)

    save(_big_state(), tmp_path / "ck")
    reader = FileSystemReader(tmp_path / "ck", threads=4)
    reader.store = Own(tmp_path / "ck")
    assert reader.store.concurrent_reads is False and DirectoryStore(tmp_path).concurrent_reads
    dest = {k: torch.zeros_like(v) for k, v in _big_state().items() if isinstance(v, torch.Tensor)}
    dest["strided"], dest["obj"] = torch.zeros(10, 6, dtype=torch.float64), {"step": None}
    load(dest, storage_reader=reader)
    assert torch.equal(dest["big"], _big_state()["big"])
    assert set(Own.calls) == {"MainThread"}


def test_every_corrupt_block_of_a_piece_and_a_short_read_leave_no_unverified_byte(tmp_path):
    path = tmp_path / "ck"
    n = (12 << 20) // 4  # three 4 MiB blocks, one piece
    save({"w": torch.arange(n, dtype=torch.float32)}, path)
    (data,) = _data_files(path)
    with open(data, "r+b") as file:
        for at in (100, (8 << 20) + 100):  # blocks 0 and 2
            file.seek(at)
            file.write(b"\xff")
    dest = {"w": torch.full((n,), -1.0)}
    with pytest.raises(CheckpointError, match="block 0 of its data"):
        load(dest, storage_reader=FileSystemReader(path, threads=1))
    block = n // 3
    assert torch.equal(dest["w"][:block], torch.zeros(block))
    assert torch.equal(dest["w"][2 * block :], torch.zeros(block))
    assert torch.equal(dest["w"][block : 2 * block], torch.arange(block, 2 * block).float())
    # a read that comes back short (the file cut meanwhile): the piece read is zeroed
    from ckptconf.reference.filesystem import DirectoryStore

    class Short(DirectoryStore):
        def read_into(self, name, start, buffer):
            return super().read_into(name, start, buffer) - 4096

    reader = FileSystemReader(path, threads=1)
    reader.store = Short(path)
    dest = {"w": torch.full((n,), -1.0)}
    with pytest.raises(CheckpointError, match="truncated"):
        load(dest, storage_reader=reader)
    assert torch.equal(dest["w"], torch.zeros(n))


def test_a_planner_resolving_the_wrong_dtype_or_kind_is_a_clear_error(tmp_path):
    class Wrong(ReferenceSavePlanner):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def resolve_data(self, write_item):
            return self.value

    for value, message in (
        (
            torch.zeros(5, dtype=torch.float64),
            r"resolved torch.float64, the plan says torch.float32",
        ),
        ([1, 2], r"resolved a list, not a tensor"),
    ):
        for threads in (1, 3):
            with pytest.raises(CheckpointError, match=message):
                save(
                    {"w": torch.zeros(10)},
                    storage_writer=FileSystemWriter(tmp_path / "ck", threads=threads),
                    planner=Wrong(value),
                )
    with pytest.raises(ValueError, match="threads must be at least 1"):
        FileSystemReader(tmp_path, threads=0)


def test_conjugate_and_negative_views_save_their_values(tmp_path):
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    state = {"conj": z.conj(), "neg": torch._neg_view(torch.arange(4.0))}
    save(state, tmp_path / "ck")
    dest = {"conj": torch.zeros(2, dtype=torch.complex64), "neg": torch.zeros(4)}
    load(dest, tmp_path / "ck")
    assert dest["conj"].tolist() == [1 - 2j, 3 + 4j]
    assert dest["neg"].tolist() == [-0.0, -1.0, -2.0, -3.0]


def test_a_one_element_destination_with_a_stride_loads(tmp_path):
    """A one-element slice of step 2 is "contiguous" to torch but not viewable as bytes."""
    save({"b": torch.tensor([5.0])}, tmp_path / "ck")
    holder = torch.zeros(4)
    dest = {"b": holder[1::2][:1]}
    assert dest["b"].is_contiguous() and dest["b"].stride() == (2,)
    load(dest, tmp_path / "ck")
    assert holder.tolist() == [0.0, 5.0, 0.0, 0.0]


def test_a_rank_with_much_to_write_spreads_it_over_one_file_per_thread(tmp_path, small_pieces):
    """Three items of 20:40:8 on 2 threads, above the (scaled) threshold: the largest item to one
    file, the others (in plan order) to the other; regions name the file each item lies in,
    and the state loads back."""
    mib = 1 << 12  # x 4 bytes: 272 KiB in all, above the 256 KiB threshold
    state = {
        "a": torch.arange(5 * mib, dtype=torch.float32),  # 20 MiB
        "b": torch.arange(10 * mib, dtype=torch.float32),  # 40 MiB
        "c": torch.arange(2 * mib, dtype=torch.float32),  # 8 MiB
    }
    save(state, storage_writer=FileSystemWriter(tmp_path / "ck", threads=2, block_size=4096))
    files = sorted(Path(f).name for f in _data_files(tmp_path / "ck"))
    assert files == ["r0-1.bin", "r0.bin"]
    folder = Path(_data_files(tmp_path / "ck")[0]).parent
    assert (folder / "r0.bin").read_bytes() == state["b"].numpy().tobytes()
    assert (folder / "r0-1.bin").read_bytes() == (
        state["a"].numpy().tobytes() + state["c"].numpy().tobytes()
    )
    dest = {k: torch.zeros_like(v) for k, v in state.items()}
    load(dest, tmp_path / "ck")
    assert all(torch.equal(dest[k], state[k]) for k in state)
    # one thread, or a store that writes its own way: one file
    save(state, storage_writer=FileSystemWriter(tmp_path / "one", threads=1))
    assert [Path(f).name for f in _data_files(tmp_path / "one")] == ["r0.bin"]


def test_less_than_a_mib_is_written_and_read_on_the_calling_thread_and_more_on_the_pool(
    tmp_path, monkeypatch
):
    """Handing small items to pool threads costs more than copying them: a save or load of
    less than 1 MiB runs on the calling thread, one of more on the pool's threads."""
    import threading

    from ckptconf.reference.filesystem import DirectoryStore, _FileSink

    used: list[str] = []
    write, write_at = _FileSink.write, _FileSink.write_at
    read_into = DirectoryStore._read_file_into

    def recording_write(self, data):
        used.append(threading.current_thread().name)
        return write(self, data)

    def recording_write_at(self, offset, data):
        used.append(threading.current_thread().name)
        return write_at(self, offset, data)

    def recording_read_into(self, name, start, buffer):
        used.append(threading.current_thread().name)
        return read_into(self, name, start, buffer)

    monkeypatch.setattr(_FileSink, "write", recording_write)
    monkeypatch.setattr(_FileSink, "write_at", recording_write_at)
    monkeypatch.setattr(DirectoryStore, "_read_file_into", recording_read_into)
    for size, pooled in ((1 << 10, False), (3 << 20, True)):
        state = {f"t{i}": torch.arange(size // 16, dtype=torch.float32) for i in range(4)}
        for step in ("save", "load"):
            used.clear()
            if step == "save":
                writer = FileSystemWriter(tmp_path / str(size), threads=4)
                save(state, storage_writer=writer)
            else:
                dest = {k: torch.zeros_like(v) for k, v in state.items()}
                load(dest, storage_reader=FileSystemReader(tmp_path / str(size), threads=4))
                assert all(torch.equal(dest[k], state[k]) for k in state)
            assert used, step
            assert (set(used) != {"MainThread"}) == pooled, (size, step, sorted(set(used)))
