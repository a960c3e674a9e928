"""The one failure type, the trial that fills it in, and the runner's per-rank outcomes."""

from __future__ import annotations

import pickle

import pytest
from ckptconf.conformance import (
    Backend,
    ConformanceFailure,
    Layout,
    Mismatch,
    SaveLoadCase,
    TensorSpec,
    check_save_then_load,
)
from ckptconf.conformance.kit.failures import HangFailure, render_brief, render_failure
from ckptconf.conformance.kit.running import PoolRanks, RanksLost
from ckptconf.conformance.kit.trial import Trial, describe_outcomes
from ckptconf.reference import FileSystemReader, FileSystemWriter

from tests.harness import rank_functions


def test_a_failure_is_its_fields_and_reads_as_text():
    failure = ConformanceFailure(
        "2 loaded value(s) differ from what was saved",
        backend="mine",
        suite="roundtrip",
        test="test_roundtrip.py::TestRoundTrip::test_round_trip",
        case="save on 2 rank(s), load on 2 rank(s)\n  'w': float32[4]: plain -> plain",
        rank=1,
        key="w",
        index=(3,),
        expected=21.0,
        actual=0.0,
        details="  rank 1, key 'w' at global index (3,): expected 21.0, got 0.0",
        reproduction="python -m pytest x.py::T::t",
    )
    fields = failure.fields()
    assert fields["index"] == [3] and fields["expected"] == "21.0" and fields["actual"] == "0.0"
    assert ConformanceFailure.from_fields(fields).fields() == fields
    assert pickle.loads(pickle.dumps(failure)).fields() == fields
    assert str(failure) == render_failure(fields)
    assert str(failure).splitlines() == [
        "[mine] 2 loaded value(s) differ from what was saved",
        "case:",
        "save on 2 rank(s), load on 2 rank(s)",
        "  'w': float32[4]: plain -> plain",
        "first difference: rank 1, key 'w', global index (3,), expected 21.0, got 0.0",
        "  rank 1, key 'w' at global index (3,): expected 21.0, got 0.0",
        "reproduce: python -m pytest x.py::T::t",
    ]


_TRACEBACK = """Traceback (most recent call last):
  File "/src/driver.py", line 160, in read
    future = reader.read_data(plan, planner)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/src/storage.py", line 596, in _read_tensor_items
    base = torch.frombuffer(data, dtype=torch.uint8).view(dtype)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ValueError: both buffer length (0) and count (-1) must not be 0

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/src/world.py", line 199, in _worker
    value = fn(*args, **kwargs)
CheckpointError: checkpoint load of /tmp/c7 failed on rank(s) [0, 1]"""


def test_the_brief_failure_puts_the_error_and_where_it_was_raised_first_in_few_lines():
    details = "\n".join(
        [
            "  ranks 0, 1: CheckpointError: checkpoint load of /tmp/c7 failed on rank(s) [0, 1]:",
            "  rank 0: ValueError: both buffer length (0) and count (-1) must not be 0",
            *[f"--- traceback of rank {r} ---\n{_TRACEBACK}" for r in range(4)],
            "--- output of rank 0 ---\n" + "noise\n" * 40,
        ]
    )
    fields = ConformanceFailure(
        "load raised on ranks 0, 1",
        backend="mine",
        step="load",
        kind="raised",
        errors=("CheckpointError: checkpoint load of /tmp/c7 failed",),
        case="save on 2 rank(s), load on 2 rank(s)\n"
        + "".join(f"  'k{i}': f32[4]\n" for i in range(9))
        + "-> 10. load slot 0",  # a lifecycle run ends with its failing step
        rank=0,
        details=details,
        reproduction="/venv/bin/python -m pytest x.py::T::t",
        minimal_case="Draw 1 (case): SaveLoadCase(\n" + "    field,\n" * 20 + ")",
    ).fields()
    lines = render_brief(fields, record="report.json").splitlines()
    assert "first difference: rank 0, global index 3" in render_brief({**fields, "index": 3})
    assert len(lines) <= 25, lines
    assert lines == [
        "[mine] load raised on ranks 0, 1",
        "failed at: step load, kind raised, raises CheckpointError",
        "case:",
        "save on 2 rank(s), load on 2 rank(s)",
        "  'k0': f32[4]",
        "  'k1': f32[4]",
        "  'k2': f32[4]",
        "  ... 5 more line(s) in the full record",
        "  'k8': f32[4]",
        "-> 10. load slot 0",  # the last lines stay: the failing step
        "where: rank 0",
        "  ranks 0, 1: CheckpointError: checkpoint load of /tmp/c7 failed on rank(s) [0, 1]:",
        "  rank 0: ValueError: both buffer length (0) and count (-1) must not be 0",
        "raised at:",
        '  File "/src/storage.py", line 596, in _read_tensor_items',
        "    base = torch.frombuffer(data, dtype=torch.uint8).view(dtype)",
        "ValueError: both buffer length (0) and count (-1) must not be 0",
        "minimal case: the case above (hypothesis' draws: the full record)",
        "reproduce: /venv/bin/python -m pytest x.py::T::t",
        "full record (every rank's traceback and output): report.json",
    ]


class _Group(Exception):
    def __init__(self, exceptions):
        super().__init__("Hypothesis found distinct failures")
        self.exceptions = exceptions


def test_every_distinct_failure_hypothesis_found_reaches_the_report_and_the_brief():
    """Hypothesis reports several distinct failures of one test as an exception group: the
    first conformance failure is the test's failure, the others are kept and named."""
    from types import SimpleNamespace

    from ckptconf.conformance.kit.fixtures import _failure_info

    def failed(what, step, kind, error, draw):
        exc = ConformanceFailure(what, backend="mine", step=step, kind=kind, errors=(error,))
        exc.__notes__ = [f"Draw 1 (case): {draw}"]
        return exc

    load = failed("2 value(s) differ", "load", "wrong_values", "rank 1, key 'w'", "A")
    save = failed("save raised on rank 0", "save", "raised", "OSError: disk full", "B")
    hang = RuntimeError("a third, not a conformance failure")
    group = _Group([load, _Group([save, hang])])  # hypothesis' (nested) exception group
    info = _failure_info(SimpleNamespace(excinfo=SimpleNamespace(value=group)))
    assert info["failure"]["what"] == "2 value(s) differ"
    assert info["minimal_case"] == "Draw 1 (case): A"
    assert info["failure"]["others"] == [
        {
            "what": "save raised on rank 0",
            "step": "save",
            "kind": "raised",
            "error": "OSError: disk full",
            "minimal_case": "Draw 1 (case): B",
        },
        {"what": "RuntimeError: a third, not a conformance failure", "minimal_case": None},
    ]
    brief = render_brief(info["failure"]).splitlines()
    at = brief.index("and 2 other distinct failure(s) of this test (full record):")
    assert brief[at + 1 : at + 3] == [
        "  - step save, kind raised: save raised on rank 0",
        "  - RuntimeError: a third, not a conformance failure",
    ]
    full = render_failure(info["failure"])
    assert (
        "distinct failure 2 of this test: step save, kind raised: save raised on rank 0\n" in full
    )
    assert "  first error: OSError: disk full\n  minimal case: Draw 1 (case): B" in full
    single = _failure_info(SimpleNamespace(excinfo=SimpleNamespace(value=load)))
    assert "others" not in single["failure"]


def test_a_trial_fails_with_the_first_mismatch_in_the_fields():
    backend = Backend("b", storage_writer=FileSystemWriter, storage_reader=FileSystemReader)
    trial = Trial(backend, "the case", suite="s", test="t", reproduction="again")
    mismatches = [
        Mismatch("w", 1, "local index (0,)", (2,), 14.0, 7.0, 3),
        Mismatch("b", 0, "object differs", expected=b"x", actual=None),
    ]
    with pytest.raises(ValueError, match="a failure needs a step, and no step ran yet"):
        trial.check_values(mismatches, "loaded value(s) differ")
    with pytest.raises(ConformanceFailure) as caught:
        trial.check_values(mismatches, "loaded value(s) differ", step="load")
    fields = caught.value.fields()
    assert (fields["step"], fields["kind"], fields["keys"]) == ("load", "wrong_values", ["w", "b"])
    assert fields["errors"] == [str(m) for m in mismatches]
    assert (fields["what"], fields["rank"], fields["key"], fields["index"]) == (
        "2 loaded value(s) differ",
        1,
        "w",
        [2],
    )
    assert (fields["expected"], fields["actual"]) == ("14.0", "7.0")
    assert (fields["backend"], fields["suite"], fields["test"]) == ("b", "s", "t")
    assert fields["case"] == "the case" and fields["reproduction"] == "again"
    assert "key 'b'" in fields["details"] and "(3 elements differ)" in fields["details"]
    trial.check_values([], "never raised")


@pytest.mark.multiprocess
def test_the_pool_runner_returns_every_rank_and_loses_none_on_an_error():
    backend = Backend("b", storage_writer=FileSystemWriter, storage_reader=FileSystemReader)
    ranks = PoolRanks("cpu")
    outcomes = ranks.run(backend, rank_functions.backend_name_and_rank, (), world=2, timeout=60)
    assert [(o.rank, o.value, o.raised) for o in outcomes] == [
        (0, ("b", 0), False),
        (1, ("b", 1), False),
    ]
    outcomes = ranks.run(
        backend, rank_functions.fail_on_rank_with_backend, (1,), world=2, timeout=60
    )
    assert [o.raised for o in outcomes] == [False, True]
    assert outcomes[0].value == "rank 0 fine"
    assert (outcomes[1].error_type, outcomes[1].message) == (
        "ValueError",
        "rank 1 failed on purpose",
    )
    assert "fail_on_rank_with_backend" in outcomes[1].traceback
    text = describe_outcomes(outcomes)
    assert "rank 1: ValueError: rank 1 failed on purpose" in text


@pytest.mark.multiprocess
def test_a_rank_keeps_the_backend_it_built_unless_the_backend_asks_otherwise():
    kept = Backend("kept", storage_writer=FileSystemWriter, storage_reader=FileSystemReader)
    fresh = Backend(
        "fresh",
        storage_writer=FileSystemWriter,
        storage_reader=FileSystemReader,
        rebuild_per_step=True,
    )
    ranks = PoolRanks("cpu")

    def steps_seen(backend):
        outcomes = ranks.run(backend, rank_functions.backend_steps_seen, (), world=2, timeout=60)
        assert [o.value[0] for o in outcomes] == [backend.name] * 2
        return [o.value[1] for o in outcomes]

    # the pool may be warm: a test before this one may have used an equal backend
    before = steps_seen(kept)
    assert steps_seen(kept) == [before[0] + 1, before[1] + 1]
    assert steps_seen(fresh) == [1, 1]
    assert steps_seen(fresh) == [1, 1], "rebuild_per_step=True: a new backend every step"
    # kept across steps of other backends too, as long as the process lives
    assert steps_seen(kept) == [before[0] + 2, before[1] + 2]


@pytest.mark.multiprocess
def test_a_hang_is_lost_ranks_with_their_stacks_and_a_trial_failure():
    backend = Backend("b", storage_writer=FileSystemWriter, storage_reader=FileSystemReader)
    with pytest.raises(RanksLost) as caught:
        PoolRanks("cpu").run(
            backend, rank_functions.hang_on_rank_with_backend, (1,), world=2, timeout=5
        )
    assert caught.value.hung
    stuck = {o.rank: o for o in caught.value.outcomes}
    assert stuck[1].error_type == "Stuck" and "hang_on_rank_with_backend" in stuck[1].traceback
    trial = Trial(backend, "a hanging case", timeout=5)
    with pytest.raises(ValueError, match="a step's label must start with its step"):
        trial.run("a step", rank_functions.hang_on_rank_with_backend, 1, world=2)
    with pytest.raises(HangFailure, match=r"^\[b\] save \(that hangs\) hung: ") as failed:
        trial.run("save (that hangs)", rank_functions.hang_on_rank_with_backend, 1, world=2)
    assert "hang_on_rank_with_backend" in failed.value.failure.fields()["details"]
    assert (failed.value.failure.step, failed.value.failure.kind) == ("save", "hang")
    assert not isinstance(failed.value, Exception)  # hypothesis does not shrink it


def test_an_unavailable_device_mode_is_a_clear_skip_or_error():
    backend = Backend("b", storage_writer=FileSystemWriter, storage_reader=FileSystemReader)
    ranks = PoolRanks("cuda-shared")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert ranks.unavailable(2) == "cuda-shared mode, 2 rank(s): CUDA is not available"
    skipped = []
    trial = Trial(backend, "case", ranks=ranks, skip=skipped.append)
    with pytest.raises(RuntimeError):  # skip() returned: the trial must not go on regardless
        trial.outcomes("save", rank_functions.backend_name_and_rank, world=2)
    assert skipped == ["cuda-shared mode, 2 rank(s): CUDA is not available"]
    with pytest.raises(ValueError, match="unknown device mode 'tpu'"):
        PoolRanks("tpu")


@pytest.mark.multiprocess
def test_check_save_then_load_passes_the_reference_and_names_a_wrong_value(tmp_path):
    case = SaveLoadCase(
        (TensorSpec("w", (5, 3), "float32"),),
        (Layout("dtensor", (2,), ("S0",)),),
        (Layout("dtensor", (2,), ("S1",)),),
        2,
        2,
    )
    from ckptconf.conformance import select_backend

    check_save_then_load(select_backend("reference"), case)
    broken = select_backend("tests.planted.storage:reader_ignores_storage_offsets")
    with pytest.raises(ConformanceFailure) as caught:
        check_save_then_load(broken, case, tmp_path / "c")
    fields = caught.value.fields()
    assert fields["backend"] == "reader_ignores_storage_offsets" and fields["key"] == "w"
    assert fields["expected"] != fields["actual"] and len(fields["index"]) == 2
