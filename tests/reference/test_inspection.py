"""inspect and verify: what a checkpoint holds, whether it is whole, for the ckptconf format and
torch DCP's filesystem layout; DCP's pickled metadata read without running code."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil

import pytest
import torch
from ckptconf.cli import UNKNOWN_FORMAT, main
from ckptconf.reference import (
    UnknownFormatError,
    UnsafeMetadataError,
    load_dcp_metadata,
    open_checkpoint,
    render_tree,
    verify,
)
from ckptconf.reference.compat import declares_field, hf_storage, metadata_version
from ckptconf.reference.dcp_metadata import ALLOWED_GLOBALS
from ckptconf.reference.inspection import layout_reads, parse_layout, render_layout
from expecttest import assert_expected_inline
from torch.distributed.checkpoint.metadata import Metadata

from tests.reference.rank_scenarios import save_for_inspection

needs_hf = pytest.mark.skipif(
    not hf_storage(), reason="this torch's DCP has no HuggingFaceStorageWriter"
)
SAVED = ("reference", "dcp", "hf") if hf_storage() else ("reference", "dcp")
WRITERS = ("reference", "dcp", pytest.param("hf", marks=needs_hf))
FORMATS = {"reference": "ckptconf", "dcp": "torch-dcp", "hf": "safetensors"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One whole 2-rank checkpoint per writer, copied by each test that breaks it."""
    from ckptconf.harness import get_world

    root = tmp_path_factory.mktemp("inspection")
    for writer in SAVED:
        get_world(2).run(save_for_inspection, str(root / writer), writer, timeout=120)
    return root


def _copy(saved, writer: str, tmp_path) -> str:
    target = tmp_path / writer
    shutil.copytree(saved / writer, target)
    return str(target)


def _data_files(path: str) -> list[str]:
    view = open_checkpoint(path)
    return sorted({c.file for e in view.entries for c in e.chunks if c.file})


@pytest.mark.multiprocess
@pytest.mark.parametrize("writer", WRITERS)
def test_a_whole_checkpoint_is_read_and_verifies_clean(saved, writer):
    view = open_checkpoint(saved / writer)
    assert view.format == FORMATS[writer]
    entries = {e.key: e for e in view.entries}
    objects = [] if writer == "hf" else ["step"]
    assert sorted(entries) == ["cols", "rows", "stage1.w", *objects]
    assert (entries["rows"].dtype, entries["rows"].shape) == ("float64", (5, 3))
    assert sorted((c.offsets, c.sizes) for c in entries["rows"].chunks) == [
        ((0, 0), (3, 3)),
        ((3, 0), (2, 3)),
    ]
    assert sorted((c.offsets, c.sizes) for c in entries["cols"].chunks) == [
        ((0, 0), (2, 2)),
        ((0, 2), (2, 2)),
    ]
    assert [(c.offsets, c.sizes) for c in entries["stage1.w"].chunks] == [((0,), (3,))]
    assert all(entries[key].kind == "bytes" for key in objects)
    for entry in view.entries:
        for chunk in entry.chunks:
            assert chunk.file in view.files and chunk.start + chunk.length <= view.files[chunk.file]
    assert verify(saved / writer) == []
    assert main(["verify", str(saved / writer)]) == 0


@pytest.mark.multiprocess
@needs_hf
def test_a_missing_safetensors_shard_leaves_a_gap(saved, tmp_path):
    """The layout records no global shape: a missing file shows as the chunks it held missing."""
    path = _copy(saved, "hf", tmp_path)
    os.remove(os.path.join(path, _data_files(path)[0]))  # rank 0's: rows 0:3, cols 0:2
    problems = [str(p) for p in verify(path)]
    assert any(p.startswith("key 'rows': 9 of 15 elements are not covered") for p in problems)
    assert any(p.startswith("key 'cols': 4 of 8 elements are not covered") for p in problems)


@pytest.mark.multiprocess
@needs_hf
def test_a_malformed_safetensors_header_is_named(saved, tmp_path):
    path = _copy(saved, "hf", tmp_path)
    name = _data_files(path)[-1]
    with open(os.path.join(path, name), "r+b") as file:
        file.write((10**9).to_bytes(8, "little"))
    (problem,) = verify(path)
    assert name in problem.what and "header length 1000000000 exceeds the file" in problem.what


@pytest.mark.multiprocess
@pytest.mark.parametrize("writer", ("reference", "dcp"))
def test_a_missing_data_file_is_named_with_its_keys(saved, writer, tmp_path):
    path = _copy(saved, writer, tmp_path)
    gone = _data_files(path)[0]
    os.remove(os.path.join(path, gone))
    problems = verify(path)
    assert problems and all(p.file == gone for p in problems), problems
    assert all("does not exist" in p.what and p.key for p in problems)
    assert main(["verify", path]) == 1


@pytest.mark.multiprocess
@pytest.mark.parametrize("writer", WRITERS)
def test_a_truncated_data_file_is_a_problem(saved, writer, tmp_path):
    path = _copy(saved, writer, tmp_path)
    cut = _data_files(path)[-1]
    target = os.path.join(path, cut)
    os.truncate(target, os.path.getsize(target) // 2)
    problems = verify(path)
    assert problems and all(p.file == cut for p in problems), problems
    # safetensors: the header says the file is longer than it is
    assert any(
        "beyond the end of the file" in p.what or "exceeds the file" in p.what for p in problems
    )


@pytest.mark.multiprocess
def test_a_flipped_byte_fails_the_reference_checksum(saved, tmp_path):
    path = _copy(saved, "reference", tmp_path)
    view = open_checkpoint(path)
    (rows,) = [e for e in view.entries if e.key == "rows"]
    chunk = rows.chunks[0]
    with open(os.path.join(path, chunk.file), "r+b") as file:
        file.seek(chunk.start + 5)
        old = file.read(1)[0]
        file.seek(chunk.start + 5)
        file.write(bytes([old ^ 0x10]))
    (problem,) = verify(path)
    assert (problem.key, problem.chunk, problem.file) == ("rows", chunk.offsets, chunk.file)
    assert "checksum mismatch in block 0" in problem.what


@pytest.mark.multiprocess
def test_tampered_dcp_metadata_leaves_a_gap_that_is_named(saved, tmp_path, capsys):
    path = _copy(saved, "dcp", tmp_path)
    with open(os.path.join(path, ".metadata"), "rb") as file:
        metadata = load_dcp_metadata(file.read())
    chunk = metadata.state_dict_metadata["rows"].chunks[1]
    chunk.sizes = torch.Size([1, 3])  # rows 3:5 -> 3:4, row 4 in no chunk
    with open(os.path.join(path, ".metadata"), "wb") as file:
        pickle.dump(metadata, file)
    assert main(["verify", path]) == 1
    assert_expected_inline(
        capsys.readouterr().out.replace(path, "<ckpt>"),
        """\
key 'rows': 3 of 15 elements are not covered by any chunk (gaps at offsets (4, 0) sizes (1, 3))
key 'rows', chunk at (3, 0), file '__1_0.distcp': its bytes hold float64[2, 3], the metadata says float64[1, 3]
<ckpt>: NOT whole, 2 problem(s)
""",
    )
    problems = [str(p) for p in verify(path)]
    assert (
        "key 'rows': 3 of 15 elements are not covered by any chunk (gaps at offsets (4, 0) sizes (1, 3))"
        in problems
    ), problems
    assert (
        "key 'rows', chunk at (3, 0), file '__1_0.distcp': its bytes hold float64[2, 3], the "
        "metadata says float64[1, 3]" in problems
    ), problems


@pytest.mark.multiprocess
def test_tampered_reference_metadata_is_a_problem(saved, tmp_path):
    path = _copy(saved, "reference", tmp_path)
    target = os.path.join(path, "ckptconf.json")
    with open(target) as file:
        text = file.read()
    changed = re.sub(r'"sizes": ?\[2, ?3\]', '"sizes":[1,3]', text, count=1)
    assert changed != text
    with open(target, "w") as file:
        file.write(changed)
    (problem,) = verify(path)
    assert "rows" in problem.what, problem


@pytest.mark.multiprocess
@pytest.mark.parametrize("writer", WRITERS)
def test_a_data_file_from_another_save_is_a_problem(saved, writer, tmp_path):
    """The other save has the same files but another state (its 'rows' is float64[6, 3])."""
    from ckptconf.harness import get_world

    from tests.reference.rank_scenarios import save_other_for_inspection

    path = _copy(saved, writer, tmp_path)
    other = str(tmp_path / "other")
    get_world(2).run(save_other_for_inspection, other, writer, timeout=120)
    mine, theirs = _data_files(path), _data_files(other)
    shutil.copyfile(os.path.join(other, theirs[0]), os.path.join(path, mine[0]))
    problems = verify(path)
    assert problems, "a data file from another save verified clean"
    if writer != "hf":  # hf: the chunks the file no longer holds are a gap of their key
        assert all(p.file == mine[0] for p in problems), problems
    else:
        assert [(p.key, p.what.split(" (")[0]) for p in problems] == [
            ("cols", "4 of 8 elements are not covered by any chunk")
        ]


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_dcp_metadata_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UnsafeMetadataError, match=r"references (posix|os)\.system"):
        load_dcp_metadata((tmp_path / "ckpt" / ".metadata").read_bytes())
    (problem,) = verify(tmp_path / "ckpt")
    assert "system, which is not part of DCP metadata" in problem.what
    assert main(["verify", str(tmp_path / "ckpt")]) == 1
    assert not marker.exists()


def test_the_allowlist_holds_no_callable_that_runs_code():
    modules = {module for module, _ in ALLOWED_GLOBALS}
    assert modules <= {
        "torch",
        "torch.serialization",
        "torch.distributed.checkpoint.metadata",
        "torch.distributed.checkpoint.filesystem",
        "torch.distributed.checkpoint._hf_utils",
        "pathlib",
        "collections",
        "builtins",
    }
    assert {n for m, n in ALLOWED_GLOBALS if m == "builtins"} == {"set", "frozenset"}
    assert {n for m, n in ALLOWED_GLOBALS if m == "torch.serialization"} == {"_get_layout"}


@pytest.mark.multiprocess
def _dcp_bytes_named(text: str, path) -> str:
    """``text`` with the byte ranges of DCP's files named by the item each holds, and sizes in
    KiB as ``n``: DCP writes each item with ``torch.save``, whose archive differs in size between
    torch versions (rows 0:3 takes 1,641 bytes in 2.13, 1,244 in 2.6). Each range shown is the
    one the checkpoint's own ``storage_data`` records; the version is the one its metadata has."""
    metadata = load_dcp_metadata((path / ".metadata").read_bytes())
    text = text.replace(
        f"version {metadata_version(metadata) or 'unversioned'}", "version <its metadata's>"
    )
    for index, info in metadata.storage_data.items():
        offset = "" if index.offset is None else "@" + ",".join(map(str, index.offset))
        text = text.replace(
            f"{info.relative_path} [{info.offset}, {info.offset + info.length})",
            f"{info.relative_path} <{index.fqn}{offset}>",
        )
    return re.sub(r"\d+(\.\d+)? KiB", "n KiB", text)


@pytest.mark.multiprocess
def test_the_tree_of_a_dcp_checkpoint(saved):
    text = render_tree(open_checkpoint(saved / "dcp"), key="[rs]*")
    assert_expected_inline(
        _dcp_bytes_named(text, saved / "dcp").replace(str(saved), "<tmp>"),
        """\
<tmp>/dcp: torch-dcp checkpoint, version <its metadata's>
4 entries (3 tensors, 1 bytes), n KiB in 3 files
3 entries match '[rs]*'
rows  float64[5, 3]  2 chunks
  [0:3, 0:3]  __0_0.distcp <rows@0,0>
  [3:5, 0:3]  __1_0.distcp <rows@3,0>
stage1.w  int64[3]  1 chunk
  [0:3]  __1_0.distcp <stage1.w@0>
step  bytes  __1_0.distcp <step>
""",
    )
    assert "version 1.0.0" in text or not declares_field(Metadata, "version")


@pytest.mark.multiprocess
def test_inspect_json_lists_entries_and_files(saved, capsys):
    assert main(["inspect", str(saved / "dcp"), "--json", "--key", "stage*"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "torch-dcp"
    assert [e["key"] for e in data["entries"]] == ["stage1.w"]
    (chunk,) = data["entries"][0]["chunks"]
    assert (chunk["offsets"], chunk["sizes"], chunk["file"]) == ([0], [3], "__1_0.distcp")
    assert set(data["files"]) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert main(["inspect", str(saved / "nothing")]) == 2


@pytest.mark.multiprocess
def test_the_reads_of_another_layout(saved):
    """'rows' float64[5, 3] saved Shard(0) on 2 ranks (rows 0:3, 3:5), read as Shard(1) on a
    (1, 3) mesh: rank c reads column c of both saved chunks, 5 elements of 8 bytes."""
    view = open_checkpoint(saved / "dcp")
    text = render_layout(view, "mesh=(1,3) placements=[Replicate(),S1]", key="rows")
    assert_expected_inline(
        _dcp_bytes_named(text, saved / "dcp").replace(str(saved), "<tmp>"),
        """\
<tmp>/dcp: read under mesh=(1, 3) placements=[Replicate(), Shard(dim=1)], 3 ranks
rank 0: 2 read(s), needs 40 B, items touched hold n KiB
  rows[0:3, 0:1] <- __0_0.distcp <rows@0,0>  24 B
  rows[3:5, 0:1] <- __1_0.distcp <rows@3,0>  16 B
rank 1: 2 read(s), needs 40 B, items touched hold n KiB
  rows[0:3, 1:2] <- __0_0.distcp <rows@0,0>  24 B
  rows[3:5, 1:2] <- __1_0.distcp <rows@3,0>  16 B
rank 2: 2 read(s), needs 40 B, items touched hold n KiB
  rows[0:3, 2:3] <- __0_0.distcp <rows@0,0>  24 B
  rows[3:5, 2:3] <- __1_0.distcp <rows@3,0>  16 B
all ranks: need 120 B, items touched hold n KiB
""",
    )
    reads, skipped = layout_reads(view, *parse_layout("mesh=(2,) placements=[Shard(1)]"))
    assert skipped == ["stage1.w"]  # 1-D: no dim 1
    assert sum(r.needed for r in reads if r.key == "rows") == 5 * 3 * 8


def test_a_malformed_layout_is_refused_with_the_expected_form():
    with pytest.raises(ValueError, match=r'expected e\.g\. "mesh=\(2,4\)'):
        parse_layout("mesh 2x4")
    with pytest.raises(ValueError, match="placement 'Partial\\(\\)' is not Shard"):
        parse_layout("mesh=(2,) placements=[Partial()]")
    with pytest.raises(ValueError, match="one placement per mesh dim"):
        parse_layout("mesh=(2,2) placements=[Shard(0)]")


@pytest.mark.multiprocess
@pytest.mark.parametrize("writer", ("reference", "dcp"))
def test_a_2d_mesh_checkpoint_is_four_chunks_and_whole(writer, tmp_path):
    from ckptconf.harness import get_world

    from tests.reference.rank_scenarios import save_2d_for_inspection

    get_world(4).run(save_2d_for_inspection, str(tmp_path / "grid"), writer, timeout=120)
    (grid,) = open_checkpoint(tmp_path / "grid").entries
    assert sorted((c.offsets, c.sizes) for c in grid.chunks) == [
        ((0, 0), (2, 3)),
        ((0, 3), (2, 3)),
        ((2, 0), (2, 3)),
        ((2, 3), (2, 3)),
    ]
    assert verify(tmp_path / "grid") == []


def test_a_format_it_does_not_read_is_unknown_not_broken(tmp_path, capsys):
    # a single-file checkpoint, or another system's folder: inspect and verify say they cannot
    # tell, with an exit code of their own, instead of calling it NOT whole
    single = tmp_path / "model.ckpt"
    single.write_bytes(b"\x00" * 64)
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.npz").write_bytes(b"PK")
    for path, said in ((single, "a single file"), (other, "not a checkpoint format")):
        for command in ("verify", "inspect"):
            assert main([command, str(path)]) == UNKNOWN_FORMAT == 3, (command, path)
            captured = capsys.readouterr()
            assert said in captured.err and "NOT whole" not in captured.out, captured
        with pytest.raises(UnknownFormatError, match=said):
            verify(path)
    # nothing there, or an empty folder: not whole (exit 1), not unknown
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "nothing", tmp_path / "empty"):
        assert main(["verify", str(path)]) == 1
        assert "NOT whole" in capsys.readouterr().out
