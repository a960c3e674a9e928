"""The verdict of one test, judged failure by failure (kit/verdicts.py), without ranks: the
"parent" is a stand-in whose replay raises what the test decides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ckptconf.conformance import ConformanceFailure
from ckptconf.conformance.expectations import Expectations
from ckptconf.conformance.kit.failures import HangFailure
from ckptconf.conformance.kit.outcomes import Outcome
from ckptconf.conformance.kit.verdicts import Verdict

TEST = "resharding::test_placement_change"
OUT_OF_BOUNDS = "CheckpointException: ValueError: key:w has out of bounds chunk"


def _entries(tmp_path, name: str) -> list:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        "[[known]]\n"
        f'test = "{TEST}"\n'
        'step = "save"\nkind = "raised"\nraises = "CheckpointException"\n'
        'match = "out of bounds chunk"\n'
        f'reason = "{name}: chunks past the end"\n'
    )
    return Expectations.load(path).for_test(TEST)


def _failure(error: str = OUT_OF_BOUNDS, *, kind: str = "raised", case: str = "c") -> Exception:
    return ConformanceFailure(
        "save raised on rank 0", step="save", kind=kind, errors=(error,) if error else (), case=case
    )


class _Backends:
    """Stand-in backends and the replay of one example on them: each backend's behaviour on the
    example is set by the test; every replay is counted."""

    def __init__(self, **behaviour):
        self.behaviour, self.calls = behaviour, []

    def backend(self, name: str):
        return SimpleNamespace(name=name)

    def checker_for(self, backend):
        return backend

    def replay(self, checker) -> None:
        self.calls.append(checker.name)
        raised = self.behaviour.get(checker.name)
        if raised is not None:
            raise raised


def _verdict(tmp_path, backends: _Backends, *, own=False, parent=True, test=TEST) -> Verdict:
    dcp = backends.backend("torch-dcp")
    inherited = _entries(tmp_path, "torch-dcp")
    return Verdict(
        test,
        "mine",
        own=_entries(tmp_path, "mine") if own else (),
        parent=dcp if parent else None,
        inherited=inherited if parent else (),
        builtins={"torch-dcp": (dcp, inherited)},
        checker_for=backends.checker_for,
    )


def test_a_failure_the_parent_fails_the_same_way_is_inherited_and_the_search_goes_on(tmp_path):
    backends = _Backends(**{"torch-dcp": _failure()})
    verdict = _verdict(tmp_path, backends)
    assert verdict.judge(_failure(case="one"), backends.replay, "example 1")
    assert verdict.judge(_failure(case="two"), backends.replay, "example 2")
    assert verdict.judge(_failure(case="two"), backends.replay, "example 2")  # cached
    assert backends.calls == ["torch-dcp", "torch-dcp"]
    assert verdict.outcome(failed=False) is Outcome.INHERITED
    (known,) = verdict.to_json()["known"]
    assert known["origin"] == "torch-dcp" and known["count"] == 3
    assert [e["case"] for e in known["examples"]] == ["one", "two", "two"]


def test_a_failure_the_parent_does_not_have_is_the_backends_own(tmp_path):
    backends = _Backends()  # torch-dcp passes the example
    verdict = _verdict(tmp_path, backends)
    failure = _failure()
    assert not verdict.judge(failure, backends.replay, "example 1")
    assert "torch-dcp passes this example: the failure is mine's own" in failure.verdict
    assert "torch-dcp passes this example" in str(failure)
    assert verdict.outcome(failed=True) is Outcome.FAILED
    assert verdict.hint is None  # never a hint to inherit what the parent does not fail


def test_a_parent_failing_otherwise_does_not_excuse(tmp_path):
    other = _failure("CheckpointException: overlapping chunks")
    backends = _Backends(**{"torch-dcp": other})
    failure = _failure()
    verdict = _verdict(tmp_path, backends)
    assert not verdict.judge(failure, backends.replay, "example 1")
    assert "torch-dcp fails this example otherwise" in failure.verdict


@pytest.mark.parametrize(
    "own_failure",
    [
        _failure("RuntimeError: out of bounds chunk"),  # another exception
        _failure("CheckpointException: overlapping chunks"),  # another message
        _failure(None, kind="wrong_values"),  # another kind
        HangFailure(_failure(None, kind="hang")),  # a hang
        KeyError("w"),  # a harness error
    ],
    ids=["exception", "message", "kind", "hang", "harness"],
)
def test_a_failure_resembling_a_known_one_is_not_excused(tmp_path, own_failure):
    backends = _Backends(**{"torch-dcp": _failure()})
    verdict = _verdict(tmp_path, backends, own=True)
    assert not verdict.judge(own_failure, backends.replay, "example 1")
    assert backends.calls == []  # no entry matched: the parent was not even asked


def test_own_entries_need_no_parent_and_unmatched_ones_are_an_unexpected_pass(tmp_path):
    backends = _Backends()
    verdict = _verdict(tmp_path, backends, own=True, parent=False)
    assert verdict.judge(_failure(), backends.replay, "example 1")
    assert backends.calls == []
    assert verdict.outcome(failed=False) is Outcome.EXPECTED
    quiet = _verdict(tmp_path, backends, own=True, parent=False)
    assert quiet.outcome(failed=False) is Outcome.UNEXPECTED_PASS
    assert quiet.to_json()["unmatched"][0].endswith("match 'out of bounds chunk'")


def test_the_hint_to_inherit_comes_only_where_the_builtin_fails_the_same_way(tmp_path):
    backends = _Backends(**{"torch-dcp": _failure()})
    verdict = _verdict(tmp_path, backends, parent=False)
    assert not verdict.judge(_failure(), backends.replay, "example 1")
    assert verdict.outcome(failed=True) is Outcome.FAILED
    assert "torch-dcp fails this example the same way" in verdict.hint
    assert "declare inherits='torch-dcp'" in verdict.hint
    passing = _Backends()
    quiet = _verdict(tmp_path, passing, parent=False)
    assert not quiet.judge(_failure(), passing.replay, "example 1")
    quiet.outcome(failed=True)
    assert quiet.hint is None and passing.calls == ["torch-dcp"]


def test_a_pass_where_the_parent_fails_gets_the_credit(tmp_path):
    backends = _Backends(**{"torch-dcp": _failure(case="the example")})
    verdict = _verdict(tmp_path, backends)
    verdict.passed("example 1", backends.replay)
    assert verdict.outcome(failed=False) is Outcome.PASSED
    assert verdict.credit.startswith("torch-dcp fails this test (")
    assert verdict.credit.endswith("on an example mine passes:\nthe example")
    none = _verdict(tmp_path, _Backends())
    none.passed("example 1", _Backends().replay)
    assert none.outcome(failed=False) is Outcome.PASSED and none.credit is None


def test_the_parent_may_confirm_any_matching_entry(tmp_path):
    """Two of the parent's entries match the failure; the parent's own failure fits the second
    only: inherited, by the second."""
    path = tmp_path / "two.toml"
    path.write_text(
        "[[known]]\n"
        f'test = "{TEST}"\nstep = "save"\nkind = "raised"\nraises = "CheckpointException"\n'
        'match = "chunk"\nreason = "first"\n'
        "[[known]]\n"
        f'test = "{TEST}"\nstep = "save"\nkind = "raised"\nraises = "CheckpointException"\n'
        'match = "out of bounds"\nreason = "second"\n'
    )
    first, second = Expectations.load(path).for_test(TEST)
    parent_failure = _failure("CheckpointException: out of bounds (no such word as ch-unk)")
    assert second.matches(parent_failure.fields()) and not first.matches(parent_failure.fields())
    backends = _Backends(**{"torch-dcp": parent_failure})
    dcp = backends.backend("torch-dcp")
    verdict = Verdict(
        TEST,
        "mine",
        parent=dcp,
        inherited=[first, second],
        builtins={"torch-dcp": (dcp, [first, second])},
        checker_for=backends.checker_for,
    )
    assert verdict.judge(_failure(), backends.replay, "example 1")
    assert verdict.to_json()["known"][0]["reason"] == "second"


def test_no_hint_to_a_backend_that_inherits_already(tmp_path):
    backends = _Backends(**{"torch-dcp": _failure()})
    verdict = _verdict(tmp_path, backends)
    failure = _failure("CheckpointException: something else entirely")
    assert not verdict.judge(failure, backends.replay, "example 1")
    verdict.outcome(failed=True)
    assert verdict.hint is None


def test_a_known_hang_stops_the_property_test(tmp_path):
    """Drawing on after a known hang would wait out the timeout at every example: the example
    wrapper records it and stops the test with KnownHang, which the outcome then reads."""
    from ckptconf.conformance.kit.profiles import Pinned, _judged
    from ckptconf.conformance.kit.verdicts import KnownHang

    path = tmp_path / "hang.toml"
    path.write_text(
        f'[[known]]\ntest = "{TEST}"\nstep = "save"\nkind = "hang"\nreason = "it waits"\n'
    )
    verdict = Verdict(TEST, "mine", own=Expectations.load(path).for_test(TEST))
    ckpt = SimpleNamespace(verdict=verdict, backend=SimpleNamespace(supports=lambda f: True))

    def body(self, ckpt, data):
        raise HangFailure(_failure(None, kind="hang"))

    with pytest.raises(KnownHang):
        _judged(body)(None, ckpt=ckpt, data=Pinned("one"))
    assert verdict.outcome(failed=False) is Outcome.EXPECTED


def test_pinned_examples_have_distinct_names():
    from ckptconf.conformance.kit.profiles import Pinned, property_test

    with pytest.raises(ValueError, match=r"given twice: \['a'\]"):
        property_test(pinned=[Pinned("a"), Pinned("a"), Pinned("b")])


def test_an_own_failure_in_a_listed_test_says_no_known_failure_matches(tmp_path):
    backends = _Backends()
    verdict = _verdict(tmp_path, backends, own=True, parent=False)
    failure = _failure("RuntimeError: my own writer broke")
    assert not verdict.judge(failure, backends.replay, "example 1")
    assert failure.verdict.startswith("no known failure of this test matches this one (known: ")
    assert "mine.toml:1 (step save, kind raised" in failure.verdict
