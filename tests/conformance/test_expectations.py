"""Expectations files: entries name a failure (step, kind, exception, pattern), never a test alone."""

from __future__ import annotations

import pytest
from ckptconf.conformance import ConformanceFailure
from ckptconf.conformance.builtin import BUILT_IN, expectations_file
from ckptconf.conformance.expectations import Expectations, ExpectationsError
from ckptconf.conformance.suites import suite_test_names

OUT_OF_BOUNDS = "CheckpointException: ranks 0: ValueError: key:w has out of bounds chunk"
ENTRY = """
[[known]]
test = "resharding::test_placement_change"
step = "save"
kind = "raised"
raises = "CheckpointException"
match = "out of bounds chunk"
reason = "chunks past the end"
"""


def _failure(**fields) -> dict:
    base = {
        "what": "save raised on ranks 0, 1",
        "step": "save",
        "kind": "raised",
        "errors": [OUT_OF_BOUNDS],
        "details": "",
        "key": None,
    }
    return {**base, **fields}


def _load(tmp_path, text: str) -> Expectations:
    path = tmp_path / "known.toml"
    path.write_text(text)
    return Expectations.load(path)


def test_an_entry_matches_its_failure_and_no_other(tmp_path):
    (entry,) = _load(tmp_path, ENTRY).for_test("resharding::test_placement_change")
    assert entry.matches(_failure())
    # the same test failing another way is not excused
    assert not entry.matches(_failure(step="load"))
    assert not entry.matches(_failure(kind="hang", errors=[]))
    assert not entry.matches(_failure(kind="wrong_values", errors=[]))
    assert not entry.matches(_failure(errors=["RuntimeError: out of bounds chunk"]))
    assert not entry.matches(_failure(errors=["CheckpointException: overlapping chunks"]))
    assert not entry.matches(_failure(kind="harness", step=None))


def test_an_entry_must_describe_the_whole_failure(tmp_path):
    """Every rank's error and every wrong value must fit the entry: the known defect next to one
    more wrong value of the backend's own is not excused."""
    (raised,) = _load(tmp_path, ENTRY).entries
    other_rank = "RuntimeError: disk full"
    assert not raised.matches(_failure(errors=[OUT_OF_BOUNDS, other_rank]))
    assert not raised.matches(_failure(errors=[OUT_OF_BOUNDS, "CheckpointException: disk full"]))
    values = ENTRY.replace('kind = "raised"', 'kind = "wrong_values"').replace(
        'raises = "CheckpointException"\n', ""
    )
    values = values.replace('step = "save"', 'step = "load"')
    values = values.replace(
        "out of bounds chunk", "global index \\\\(\\\\): expected .* of the DTensor"
    )
    (entry,) = _load(tmp_path, values).entries
    scalar = "rank 0, key 'step' at global index (): expected 1.0, got -2.0 - local index () of the DTensor(mesh=(2,), [R]) piece"
    plain = "rank 0, key 'scale' at global index (): expected 2.0, got -3.0 - local index () of the plain piece"
    failure = ConformanceFailure(
        "2 loaded value(s) differ", step="load", kind="wrong_values", errors=(scalar, plain)
    )
    assert not entry.matches(failure.fields())
    only = ConformanceFailure(
        "1 loaded value(s) differ", step="load", kind="wrong_values", errors=(scalar,)
    )
    assert entry.matches(only.fields())


def test_key_globs_every_key_and_case_searches_the_case(tmp_path):
    text = ENTRY.replace('match = "out of bounds chunk"', 'key = "w*"\ncase = "ShardedTensor"')
    (entry,) = _load(tmp_path, text).entries
    failure = _failure(keys=["weight", "wide"], case="'w': ShardedTensor(dim=0)")
    assert entry.matches(failure)
    assert not entry.matches({**failure, "keys": ["weight", "bias"]})
    assert not entry.matches({**failure, "case": "'w': plain"})
    # a ConformanceFailure's own fields, as the verdict passes them; the key alone makes keys
    one = ConformanceFailure(
        "save raised on rank 0",
        step="save",
        kind="raised",
        errors=(OUT_OF_BOUNDS,),
        key="w",
        case="ShardedTensor(dim=0)",
    )
    assert one.fields()["keys"] == ["w"] and entry.matches(one.fields())


def test_parameters_may_use_globs_and_an_entry_without_covers_every_parameter(tmp_path):
    text = ENTRY.replace("test_placement_change", "test_more_ranks_than_rows[*-sharded_tensor-*]")
    glob = _load(tmp_path, text)
    assert glob.for_test("resharding::test_more_ranks_than_rows[1-rows-sharded_tensor-on-3]")
    assert not glob.for_test("resharding::test_more_ranks_than_rows[3-rows-plain-on-1]")
    whole = _load(tmp_path, ENTRY)
    assert whole.for_test("resharding::test_placement_change")
    assert whole.for_test("resharding::test_placement_change[x]")
    assert not whole.for_test("resharding::test_placement_change_more")


@pytest.mark.parametrize(
    "change, message",
    [
        (('step = "save"\n', ""), r"known.toml:2: the entry .* names no signature"),
        (('kind = "raised"\n', ""), r"known.toml:2: the entry .* names no signature"),
        (('raises = "CheckpointException"\n', ""), r"known.toml:2: a kind 'raised' entry names"),
        (('match = "out of bounds chunk"\n', 'match = "("\n'), r"known.toml:2: match '\(' is no"),
        (('step = "save"', 'step = "unpack"'), r"known.toml:2: unknown step 'unpack'"),
        (('kind = "raised"', 'kind = "flaky"'), r"known.toml:2: unknown kind 'flaky'"),
        (('reason = "chunks past the end"\n', ""), r"known.toml:2: the entry has no reason"),
        (('test = "', 'tset = "'), r"known.toml:2: unknown key\(s\) \['tset'\]"),
        (('test = "resharding::', 'test = "test_resharding.py::'), r"is not <suite>::<test"),
        (('kind = "raised"', 'kind = "no_error"'), r"known.toml:2: raises is for kinds"),
        (('match = "out', 'case = "("\nmatch = "out'), r"known.toml:2: case '\(' is no"),
    ],
)
def test_a_bad_entry_is_an_error_naming_file_and_line(tmp_path, change, message):
    with pytest.raises(ExpectationsError, match=message):
        _load(tmp_path, ENTRY.replace(*change))


def test_a_pattern_is_required_except_for_hangs(tmp_path):
    unpatterned = ENTRY.replace('match = "out of bounds chunk"\n', "")
    unpatterned = unpatterned.replace('kind = "raised"', 'kind = "wrong_values"')
    unpatterned = unpatterned.replace('raises = "CheckpointException"\n', "")
    with pytest.raises(ExpectationsError, match="known.toml:2: .* has no pattern"):
        _load(tmp_path, unpatterned)
    (hang,) = _load(tmp_path, unpatterned.replace("wrong_values", "hang")).entries
    assert hang.matches(_failure(kind="hang", errors=[]))


def test_a_harness_entry_has_no_step_and_a_named_file_must_exist(tmp_path):
    harness = ENTRY.replace('kind = "raised"', 'kind = "harness"')
    harness = harness.replace('raises = "CheckpointException"\n', "")
    with pytest.raises(ExpectationsError, match="known.toml:2: a harness error comes from no step"):
        _load(tmp_path, harness)
    (entry,) = _load(tmp_path, harness.replace('step = "save"\n', "")).entries
    harness_error = _failure(kind="harness", step=None, errors=["KeyError: out of bounds chunk"])
    assert entry.matches(harness_error)
    with pytest.raises(ExpectationsError, match="gone.toml: no such expectations file"):
        Expectations.load(tmp_path / "gone.toml", required=True)
    with pytest.raises(ExpectationsError, match=r"known.toml:1: unknown top-level key\(s\)"):
        _load(tmp_path, "knwon = 1\n" + ENTRY)


def test_unknown_tests_and_the_old_format_are_errors(tmp_path):
    suites = suite_test_names()
    with pytest.raises(ExpectationsError, match=r"known.toml:2: suite 'resharding' has no test"):
        _load(tmp_path, ENTRY.replace("test_placement_change", "test_gone")).check_tests(suites)
    with pytest.raises(ExpectationsError, match=r"known.toml:2: unknown suite 'reshard'"):
        _load(tmp_path, ENTRY.replace("resharding::", "reshard::")).check_tests(suites)
    old = "test_roundtrip.py::TestRoundTrip::test_round_trip  # a reason\n"
    with pytest.raises(ExpectationsError, match="earlier '<test id>  # <reason>' format"):
        _load(tmp_path, old)


def test_unmatched_lists_entries_no_failure_matched(tmp_path):
    expectations = _load(tmp_path, ENTRY + ENTRY.replace("test_placement_change", "test_x"))
    first, second = expectations.entries
    assert (first.line, second.line) == (2, 10)
    assert expectations.unmatched([first.where]) == [
        f"{second.where} resharding::test_x: step save, kind raised, raises "
        "'CheckpointException', match 'out of bounds chunk'"
    ]


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_the_shipped_expectations_parse_and_name_real_tests(name):
    path = expectations_file(name)
    if path is None:
        pytest.skip(f"{name} has no expectations file")
    Expectations.load(path).check_tests(suite_test_names())


def test_every_bad_entry_is_told_at_once(tmp_path):
    bad = ENTRY.replace('kind = "raised"', 'kind = "flaky"') + ENTRY.replace('step = "save"', "")
    with pytest.raises(ExpectationsError) as caught:
        _load(tmp_path, bad)
    lines = str(caught.value).splitlines()
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in lines] == ["2", "10"]


def test_parameters_no_collected_test_has_are_an_error(tmp_path):
    text = ENTRY.replace("test_placement_change", "test_more_ranks_than_rows[7-rows-*]")
    collected = ["resharding::test_more_ranks_than_rows[1-rows-x]", "resharding::test_x"]
    with pytest.raises(
        ExpectationsError, match=r"known.toml:2: no parameters of .* match .*\[1-rows-x\]"
    ):
        _load(tmp_path, text).check_parameters(collected)
    _load(tmp_path, text).check_parameters(["resharding::test_other[1]"])  # not collected: fine
    unparametrized = ENTRY.replace("test_placement_change", "test_placement_change[foo]")
    with pytest.raises(ExpectationsError, match="its parameters: none"):
        _load(tmp_path, unparametrized).check_parameters(["resharding::test_placement_change"])


def _raised_alike(exc: BaseException, ranks=(0, 1)):
    """What ``exc``, raised on each of ``ranks`` (a checkpoint error: every rank raises it),
    becomes in the controller: the ranks' outcomes."""
    from ckptconf.conformance.kit.running import RankOutcome
    from ckptconf.harness.errors import RankError

    outcomes = []
    for rank in ranks:
        try:
            raise exc
        except BaseException as caught:  # noqa: BLE001 - as a rank's worker catches it
            e = RankError.of(rank, caught)
        outcomes.append(
            RankOutcome(rank, error_type=e.type_name, message=e.message, causes=e.causes)
        )
    return outcomes


@pytest.mark.parametrize("maker", ["dcp", "reference"])
def test_an_entry_is_matched_against_each_ranks_own_error_inside_a_checkpoint_error(
    tmp_path, maker
):
    """A checkpoint error's text holds every failing rank's error: the known one on rank 0 must
    not excuse rank 1's other error, although the pattern is found in both ranks' text."""
    from ckptconf.conformance.kit.trial import errors_of
    from ckptconf.reference.errors import CheckpointError, RankFailure
    from torch.distributed.checkpoint.api import CheckpointException

    known = ValueError("float8 dtypes are not supported")
    other = OSError("could not reserve space for rank-1.zip")

    def error(failures: dict) -> BaseException:
        if maker == "dcp":
            return CheckpointException("save", {r: (e, None) for r, e in failures.items()})
        wrapped = {r: (RankFailure.from_exception(e), None) for r, e in failures.items()}
        return CheckpointError("save planning", wrapped, "/tmp/c0")

    (entry,) = _load(tmp_path, ENTRY.replace("out of bounds chunk", "float8 dtypes")).entries
    name = "CheckpointException" if maker == "dcp" else "CheckpointError"
    assert "float8 dtypes" in str(error({0: known, 1: other}))  # the text holds both ranks'
    mixed = errors_of(_raised_alike(error({0: known, 1: other})))
    assert mixed == (
        f"{name}: rank 0: ValueError: float8 dtypes are not supported",
        f"{name}: rank 1: OSError: could not reserve space for rank-1.zip",
    )
    alike = errors_of(_raised_alike(error({0: known, 1: known})))
    assert alike == (
        f"{name}: rank 0: ValueError: float8 dtypes are not supported",
        f"{name}: rank 1: ValueError: float8 dtypes are not supported",
    )
    if maker == "dcp":  # the entry names DCP's type
        assert not entry.matches(_failure(errors=list(mixed)))
        assert entry.matches(_failure(errors=list(alike)))
