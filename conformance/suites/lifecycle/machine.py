"""The lifecycle state machine: hypothesis draws each step in the controller, the runner runs it.

On the model of zarr's store state machine (``zarr/testing/stateful.py``): rules draw an
operation, the model says what must follow. Here the model and the checks live in the
:class:`~.runner.Runner`, so a sequence printed by a failure runs again without hypothesis.
Hypothesis shrinks a failing run to its shortest sequence.
"""

from __future__ import annotations

from typing import Any

from ckptconf.harness.faults import KILL_POINTS
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from ...kit.injection import COORDINATOR_ONLY, WRITER_HOOKS
from .cases import job_cases, numbered_save
from .runner import SLOTS, Runner
from .steps import FailedSave, KilledSave, Load, RacingLoad, Save, Wait, printed

__all__ = ["LifecycleMachine", "features_of"]

_KILL_POINTS = tuple(p for p in KILL_POINTS if p != "set_up_storage_writer")


def features_of(backend: Any, *, strict: bool) -> dict[str, bool]:
    """Which kinds of step a backend's run may draw."""
    storage = backend.supports("storage")
    return {
        "async": backend.supports("async_save"),
        "racing": storage and backend.injection_unsupported("storage_reader") is None,
        "failing": strict and storage and backend.injection_unsupported("storage_writer") is None,
        "world_change": backend.supports("world_size_change"),
    }


class LifecycleMachine(RuleBasedStateMachine):
    """One run: saves, async saves left running, waits, loads (also on another world and while
    a save commits), and with ``strict`` failed and killed saves, on two paths."""

    def __init__(self, runner: Runner, verdict: Any = None):
        super().__init__()
        self.runner, self.verdict = runner, verdict
        self.backend = runner.ckpt.backend
        self.can = features_of(self.backend, strict=runner.strict)
        self.saves = 0

    # --- drawing -------------------------------------------------------------------------------

    def _slot(self, data, slots=None) -> int:
        return data.draw(st.sampled_from(slots or list(range(SLOTS))), label="slot")

    def _case(self, data, slot: int):
        """A new save's case: a new job, or the slot's last one again with new values."""
        self.saves += 1
        last = self.runner.slots[slot].committed
        if last is not None and data.draw(st.booleans(), label="same keys as the last save"):
            return numbered_save(last, self.saves)
        return numbered_save(data.draw(job_cases(self.backend), label="case"), self.saves)

    def _settle(self, slot: int) -> None:
        """A job waits for its async save to a path before saving there again."""
        if self.runner.slots[slot].pending is not None:
            self.runner.apply(Wait(slot))

    def _pending(self) -> list[int]:
        return [i for i, s in enumerate(self.runner.slots) if s.pending is not None]

    def _loadable(self) -> list[int]:
        return [
            i
            for i, s in enumerate(self.runner.slots)
            if s.committed is not None or s.pending is not None or s.failed is not None
        ]

    # --- rules ---------------------------------------------------------------------------------

    @rule(data=st.data())
    def save(self, data):
        slot = self._slot(data)
        self._settle(slot)
        self.runner.apply(Save(slot, self._case(data, slot)))

    @precondition(lambda self: self.can["async"])
    @rule(data=st.data())
    def async_save(self, data):
        # a job waits for its last async save before it starts another (torchtitan and
        # Megatron do); two at once is a pinned run of its own
        for pending in self._pending():
            self._settle(pending)
        slot = self._slot(data)
        self.runner.apply(Save(slot, self._case(data, slot), background=True))

    @precondition(lambda self: bool(self._pending()))
    @rule(data=st.data())
    def wait(self, data):
        self.runner.apply(Wait(self._slot(data, self._pending())))

    @precondition(lambda self: bool(self._loadable()))
    @rule(data=st.data())
    def load(self, data):
        slot = self._slot(data, self._loadable())
        other = self.can["world_change"] and data.draw(st.booleans(), label="on another world")
        self.runner.apply(Load(slot, other_world=other))

    @precondition(
        lambda self: (
            self.can["racing"]
            and any(s.committed is not None and s.pending is None for s in self.runner.slots)
        )
    )
    @rule(data=st.data())
    def load_while_a_save_commits(self, data):
        slots = [
            i
            for i, s in enumerate(self.runner.slots)
            if s.committed is not None and s.pending is None
        ]
        slot = self._slot(data, slots)
        self.runner.apply(RacingLoad(slot, self._case(data, slot)))

    @precondition(lambda self: self.can["failing"])
    @rule(data=st.data())
    def failed_save(self, data):
        slot = self._slot(data)
        self._settle(slot)
        case = self._case(data, slot)
        hook = data.draw(st.sampled_from(WRITER_HOOKS), label="failing hook")
        rank = (
            0
            if hook in COORDINATOR_ONLY
            else data.draw(st.integers(0, case.save_world - 1), label="failing rank")
        )
        self.runner.apply(FailedSave(slot, case, hook, rank))

    @precondition(lambda self: self.can["failing"])
    @rule(data=st.data())
    def killed_save(self, data):
        slot = self._slot(data)
        self._settle(slot)
        case = self._case(data, slot)
        point = data.draw(st.sampled_from(_KILL_POINTS), label="kill point")
        coordinator = point in ("prepare_global_plan", "finish")
        rank = (
            0
            if coordinator
            else data.draw(st.integers(0, case.save_world - 1), label="killed rank")
        )
        self.runner.apply(KilledSave(slot, case, point, rank))

    def teardown(self):
        self.runner.finish()
        if self.verdict is not None and not self.runner.failed and self.runner.steps:
            self.verdict.passed(printed(self.runner.steps), self.runner.replay())
        share = getattr(self.runner.ckpt, "share", None)  # the run's time budget
        if share is not None:
            share.example_ends()
