"""LocalFiles, the default StoredObjects: what the corruption tests read and change."""

from __future__ import annotations

import pytest
from ckptconf.conformance import LocalFiles, StoredObjects


def test_local_files_lists_reads_changes_and_deletes_nested_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / ".metadata").write_bytes(b"meta")
    store = LocalFiles(tmp_path)
    assert store.names() == [".metadata", "sub/b.bin"]
    assert store.read("sub/b.bin") == b"\x00\x01\x02"
    assert store.size("sub/b.bin") == 3
    assert store.change_byte("sub/b.bin", 1, lambda b: b ^ 0xFF) == 0x01
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\xfe\x02"
    store.write(".metadata", b"me")
    assert (tmp_path / ".metadata").read_bytes() == b"me"
    store.delete(".metadata")
    assert store.names() == ["sub/b.bin"]
    with pytest.raises(FileNotFoundError):
        store.read(".metadata")
    assert store.where() == f"files under {tmp_path}"


class _Dict(StoredObjects):
    """An in-memory store with only the abstract methods: the defaults must use them."""

    def __init__(self):
        self.objects = {"x": b"abc"}

    def names(self):
        return sorted(self.objects)

    def read(self, name):
        return self.objects[name]

    def write(self, name, data):
        self.objects[name] = data

    def delete(self, name):
        del self.objects[name]


def test_the_defaults_replace_whole_objects():
    store = _Dict()
    assert store.size("x") == 3
    assert store.change_byte("x", 2, lambda b: b + 1) == ord("c")
    assert store.objects == {"x": b"abd"}


def test_a_single_file_checkpoint_is_one_object(tmp_path):
    single = tmp_path / "model.ckpt"
    single.write_bytes(b"abcdef")
    (tmp_path / "beside.txt").write_bytes(b"not part of it")
    files = LocalFiles(single)
    assert files.names() == ["model.ckpt"]
    assert files.read("model.ckpt") == b"abcdef" and files.size("model.ckpt") == 6
    assert files.change_byte("model.ckpt", 1, lambda b: b ^ 0xFF) == ord("b")
    assert single.read_bytes() == b"a" + bytes([ord("b") ^ 0xFF]) + b"cdef"
    files.delete("model.ckpt")
    assert not single.exists() and (tmp_path / "beside.txt").exists()


class _MyLocalFiles(LocalFiles):
    """A backend's own listing of local files (say, it skips its lock files)."""


class _Elsewhere(LocalFiles):
    local = False


def test_crash_states_runs_for_local_stored_objects_only(tmp_path, monkeypatch):
    from ckptconf.conformance import Backend
    from ckptconf.conformance.kit.outcomes import Unsupported
    from ckptconf.conformance.suites.crash_states import suite

    monkeypatch.setattr(suite, "recorder_unavailable", lambda: None)

    class Ckpt:
        def __init__(self, backend):
            self.backend = backend

        def path(self):
            return str(tmp_path / "c0")

    def backend(stored):
        return Backend(
            "b", save=lambda *a, **k: None, load=lambda *a, **k: None, stored_objects=stored
        )

    suite._recordable(Ckpt(backend(None)))  # the default: files under the path
    suite._recordable(Ckpt(backend(_MyLocalFiles)))  # a backend's own, local: recorded too
    with pytest.raises(Unsupported, match="elsewhere than in local files"):
        suite._recordable(Ckpt(backend(_Elsewhere)))
