"""Running a lifecycle run's steps on a backend, each checked against a model of its two slots.

The model (:class:`Slot`) knows, for each checkpoint path, the checkpoint last committed
there, the async save still running to it, and the last save that failed there. The
checks:

- a load of a slot with a committed checkpoint, nothing running, returns it whole;
- a load that ran while a save to its slot committed (a paused load, or an async save
  running) returns one committed checkpoint whole (the old, or the new one where it has
  the same keys) or raises naming the path;
- a load where only failed saves were made raises on every rank (what a failed save
  left is never taken for a checkpoint);
- a failed or killed save leaves the previous checkpoint (the loads after it check it);
- ``strict``: after each save, nothing is left beside the slots (staging files, parts).

A failure the backend's expectations know (``verdict``) is recorded, the slot it left in
an unknown state is not judged until the next save to it, and the run goes on.
"""

from __future__ import annotations

import os
import shlex
import sys
import uuid
from dataclasses import dataclass, replace
from typing import Any

from ...kit.failures import ConformanceFailure, HangFailure, Mismatch, error_line, listing
from ...kit.jobs import PerRankCase
from ...kit.trial import Trial, describe_outcomes, errors_of_calls, ranks_text
from ...kit.verdicts import KnownHang, failure_fields
from . import ranks
from .steps import FailedSave, KilledSave, Load, RacingLoad, Save, Step, Wait, numbered, printed

__all__ = ["KnownEntries", "Runner", "Slot", "as_saved", "replay_command"]

SLOTS = 2
_TIMEOUT = 60.0
"""Seconds a step may take (a step saves or loads a few small tensors)."""


@dataclass
class Slot:
    """What the model knows of one checkpoint path."""

    committed: PerRankCase | None = None
    pending: PerRankCase | None = None
    """The async save running to this path (not yet waited for)."""
    failed: PerRankCase | None = None
    """The case of the last save that failed here (what a load must not return)."""
    unknown: str | None = None
    """Why nothing can be said of this path until the next save (a known failure)."""


def as_saved(case: PerRankCase) -> PerRankCase:
    """``case`` loaded on the world and with the keys it was saved with."""
    return replace(
        case,
        load_world=case.save_world,
        loaded=case.saved,
        objects=tuple(replace(o, loaded_by=o.saved_by) for o in case.objects),
    )


def _same_keys(a: PerRankCase, b: PerRankCase) -> bool:
    """Whether checkpoint ``b`` holds the tensors (key, shape, dtype) and object keys of ``a``:
    a load of ``a``'s keys may then return ``b`` whole, whichever ranks saved it."""
    return {s.key: (s.shape, s.dtype) for s in a.tensors} == {
        s.key: (s.shape, s.dtype) for s in b.tensors
    } and {o.key for o in a.objects} == {o.key for o in b.objects}


def _newer_for(load: PerRankCase, newer: PerRankCase) -> PerRankCase:
    """``load``'s load side with ``newer``'s values (same keys): what a load returning the
    newer checkpoint whole holds."""
    salts = {s.key: s.salt for s in newer.tensors}
    values = {o.key: o.value for o in newer.objects}
    return replace(
        load,
        tensors=tuple(replace(s, salt=salts[s.key]) for s in load.tensors),
        objects=tuple(replace(o, value=values[o.key]) for o in load.objects),
    )


def replay_command(spec: str, steps: list[Step], *, strict: bool, device: str = "cpu") -> str:
    """The one-line command that runs ``steps`` again on the backend ``spec``."""
    parts = [sys.executable, "-m", "ckptconf.conformance.suites.lifecycle", "--backend", spec]
    if strict:
        parts.append("--strict")
    if device != "cpu":
        parts += ["--device", device]
    text = printed(steps)
    quoted = f'"{text}"' if not set(text) & set('"$`\\!') else shlex.quote(text)
    command = f"{shlex.join(parts)} {quoted}"
    from ...builtin import BUILT_IN

    if spec in BUILT_IN:
        return command
    return f"cd {shlex.quote(os.getcwd())} && {command}"  # where module:attr imports from


class KnownEntries:
    """A stand-in for a test's verdict that only knows its entries: a failure one of them
    names is known (the run goes on past it), nothing is recorded. For re-runs outside the
    test: shrinking, and the printed command."""

    def __init__(self, entries: list[Any], on_known: Any = None):
        self.entries, self.on_known = list(entries), on_known

    def judge(self, exc: BaseException, replay: Any, example: str) -> bool:
        fields = failure_fields(exc)
        entry = next((e for e in self.entries if e.matches(fields)), None)
        if entry is not None and self.on_known is not None:
            self.on_known(fields, entry)
        return entry is not None

    def passed(self, example: str, replay: Any) -> None:
        return None


class Runner:
    """Runs steps on ``ckpt``'s backend (a :class:`~...kit.trial.Checker`), checking each.

    ``verdict``: the test's verdict, which judges each failing step (known failures are
    recorded and the run goes on). ``tolerant_until``: re-running steps on another backend,
    a failure before that step index only leaves its slot unknown.
    """

    def __init__(
        self,
        ckpt: Any,
        *,
        strict: bool,
        verdict: Any = None,
        tolerant_until: int | None = None,
        title: str = "lifecycle run",
    ):
        self.ckpt, self.strict, self.verdict = ckpt, strict, verdict
        self.tolerant_until, self.title = tolerant_until, title
        self.root = ckpt.path()
        os.makedirs(self.root, exist_ok=True)
        self.run_id = uuid.uuid4().hex
        self.slots = [Slot() for _ in range(SLOTS)]
        self.steps: list[Step] = []
        self.worlds: set[int] = set()
        self.failed = False

    # --- the run -----------------------------------------------------------------------------

    def path(self, slot: int) -> str:
        """The path of slot ``slot``."""
        return os.path.join(self.root, f"ckpt-{slot}")

    def run(self, steps: list[Step]) -> None:
        """Apply ``steps`` in order, then :meth:`finish`."""
        try:
            for step in steps:
                self.apply(step)
        finally:
            self.finish()

    def apply(self, step: Step) -> None:
        """Run one step and check it; a known failure is recorded and the run goes on."""
        index = len(self.steps)
        self.steps.append(step)
        trial = self._trial(index)
        try:
            self._do(trial, step)
        except (ConformanceFailure, HangFailure) as exc:
            if self.tolerant_until is not None and index < self.tolerant_until:
                self._lost_track(step, f"step {index + 1} failed on this backend too")
                return
            if self.verdict is not None and self.verdict.judge(
                exc, self.replay(), printed(self.steps)
            ):
                if isinstance(exc, HangFailure):
                    self.failed = True  # the ranks were restarted: nothing is left to wait for
                    raise KnownHang() from exc
                self._lost_track(step, f"step {index + 1} failed as its expectations say")
                return
            self.failed = True
            if getattr(self.ckpt, "share", None) is not None:  # shrinking goes on, budget or not
                self.ckpt.share.failure_seen()
            failure = exc.failure if isinstance(exc, HangFailure) else exc
            failure.lifecycle_steps = list(self.steps)  # what shrinking starts from
            raise

    def finish(self) -> None:
        """The run's end: async saves left running are waited for (judged as steps), then every
        rank drops what it held, whatever happened before."""
        done = False
        try:
            if not self.failed:
                for slot in [i for i, s in enumerate(self.slots) if s.pending is not None]:
                    self.apply(Wait(slot))
            done = True
        finally:
            lost = None
            for world in sorted(self.worlds):
                try:
                    self.ckpt.trial("the run's end").run(
                        "async_save (the run's end: the ranks drop the backend they held)",
                        ranks.release,
                        self.run_id,
                        world=world,
                        timeout=_TIMEOUT,
                    )
                except (ConformanceFailure, HangFailure) as exc:
                    lost = lost or exc
            if done and lost is not None and not self.failed:
                raise lost

    def replay(self):
        """A function running this run's steps so far again with another backend's checker."""
        steps = list(self.steps)
        strict, title = self.strict, self.title

        def replay(checker: Any) -> None:
            Runner(checker, strict=strict, tolerant_until=len(steps) - 1, title=title).run(steps)

        return replay

    def _trial(self, index: int) -> Trial:
        case = f"{self.title}, step {index + 1} of:\n{numbered(self.steps, failing=index)}"
        trial = self.ckpt.trial(case, timeout=_TIMEOUT)
        spec = self.ckpt.backend.spec or self.ckpt.backend.name
        device = getattr(self.ckpt.ranks, "device", "cpu")
        trial.reproduction = replay_command(spec, self.steps, strict=self.strict, device=device)
        return trial

    def _lost_track(self, step: Step, why: str) -> None:
        slot = self.slots[step.slot]
        slot.unknown = why
        if isinstance(step, (Save, Wait)):  # the async save itself failed: nothing runs now
            slot.pending = None

    # --- the steps ---------------------------------------------------------------------------

    def _do(self, trial: Trial, step: Step) -> None:
        slot, path = self.slots[step.slot], self.path(step.slot)
        if isinstance(step, Save) and not step.background:
            self._on(trial, "save", ranks.save, step.case, path, world=step.case.save_world)
            slot.committed, slot.unknown = step.case, None
            self._check_nothing_beside(trial)
        elif isinstance(step, Save):
            self._on(
                trial,
                "async_save (left running while the next steps run)",
                ranks.start_async_save,
                step.slot,
                step.case,
                path,
                world=step.case.save_world,
            )
            slot.pending = step.case
        elif isinstance(step, Wait):
            case = slot.pending
            if case is None:
                return  # nothing left running (a known failure dropped it)
            self._on(
                trial,
                "async_save (waiting for it to finish)",
                ranks.wait,
                step.slot,
                world=case.save_world,
            )
            slot.committed, slot.pending, slot.unknown = case, None, None
            self._check_nothing_beside(trial)
        elif isinstance(step, FailedSave):
            self._failed_save(trial, step, slot, path)
        elif isinstance(step, KilledSave):
            self._killed_save(trial, step, slot, path)
        elif isinstance(step, Load):
            self._load(trial, step, slot, path)
        elif isinstance(step, RacingLoad):
            self._racing_load(trial, step, slot, path)
        else:
            raise TypeError(f"not a lifecycle step: {step!r}")

    def _on(self, trial: Trial, label: str, fn, *args, world: int) -> list[Any]:
        self.worlds.add(world)
        return trial.run(label, fn, self.run_id, *args, world=world)

    def _outcomes(self, trial: Trial, label: str, fn, *args, world: int):
        self.worlds.add(world)
        return trial.outcomes(label, fn, self.run_id, *args, world=world)

    def _failed_save(self, trial: Trial, step: FailedSave, slot: Slot, path: str) -> None:
        label = f"save (failing at {step.hook} on rank {step.rank})"
        outcomes = self._outcomes(
            trial,
            label,
            ranks.failing_save,
            step.case,
            path,
            step.hook,
            step.rank,
            world=step.case.save_world,
        )
        results = [o.value for o in outcomes]
        if any(o.raised for o in outcomes):
            raise trial.fail(
                f"{label} raised outside the save", describe_outcomes(outcomes), kind="harness"
            )
        if not any(r["fired"] for r in results) and not any(r["raised"] for r in results):
            slot.committed, slot.unknown = step.case, None  # the driver never called the hook
            return
        returned = [r for r, result in enumerate(results) if not result["raised"]]
        if returned:
            raise trial.fail(
                f"rank {returned[0]} returned from a save that failed at {step.hook} on rank "
                f"{step.rank}",
                "\n".join(f"rank {r}: {result}" for r, result in enumerate(results)),
                kind="no_error",
                rank=returned[0],
            )
        slot.failed = step.case
        self._check_nothing_beside(trial)

    def _killed_save(self, trial: Trial, step: KilledSave, slot: Slot, path: str) -> None:
        label = f"save (rank {step.rank} killed at {step.point})"
        killed = trial.run_fresh(
            label,
            ranks.killed_save,
            step.case,
            path,
            step.rank,
            step.point,
            world=step.case.save_world,
        )
        if isinstance(killed, Exception) or any(o.raised for o in killed):
            slot.failed = step.case
        else:  # the save never reached the point: it completed
            slot.committed, slot.unknown = step.case, None
        self._check_nothing_beside(trial)

    def _load(self, trial: Trial, step: Load, slot: Slot, path: str) -> None:
        target = slot.committed or slot.pending or slot.failed
        if target is None:
            return  # nothing was ever saved here: nothing to load into
        load_case = target if step.other_world else as_saved(target)
        others = [slot.pending] if slot.committed is not None and slot.pending is not None else []
        others = [_newer_for(load_case, o) for o in others if _same_keys(load_case, o)]
        label = "load" + (" (on another world)" if step.other_world else "")
        if slot.pending is not None:
            label += " (while an async save to it runs)"
        results = self._on(
            trial, label, ranks.load, load_case, path, others, world=load_case.load_world
        )
        if slot.unknown is not None:
            return  # a known failure left this path in a state nothing can be said of
        if slot.committed is None and slot.pending is None:
            loaded = [r for r, result in enumerate(results) if not result["raised"]]
            if loaded:
                raise trial.fail(
                    f"rank {loaded[0]} loaded slot {step.slot}, where every save failed",
                    "\n".join(f"rank {r}: {result}" for r, result in enumerate(results)),
                    kind="no_error",
                    rank=loaded[0],
                )
            return
        self._check_loaded(trial, results, path, concurrent=slot.pending is not None)

    def _racing_load(self, trial: Trial, step: RacingLoad, slot: Slot, path: str) -> None:
        old = as_saved(slot.committed) if slot.committed is not None else None
        if old is None:
            return
        judged = slot.unknown is None  # a known failure left the old checkpoint unknown
        world = old.load_world
        statuses = self._on(
            trial,
            "load (started, paused after reading the metadata)",
            ranks.start_paused_load,
            old,
            path,
            world=world,
        )
        self._on(
            trial,
            "save (while a load of the same path is paused)",
            ranks.save,
            step.case,
            path,
            world=step.case.save_world,
        )
        slot.committed, slot.unknown = step.case, None
        others = [_newer_for(old, step.case)] if _same_keys(old, step.case) else []
        results = self._on(
            trial, "load (resumed after the save committed)", ranks.resume_load, others, world=world
        )
        # a rank whose load finished before the save (it never reached read_data) raced nothing
        raced = all(status == "paused" for status in statuses)
        if judged:
            self._check_loaded(trial, results, path, concurrent=raced)
        self._check_nothing_beside(trial)

    # --- checks ------------------------------------------------------------------------------

    def _check_loaded(
        self,
        trial: Trial,
        results: list[dict[str, Any]],
        path: str,
        *,
        concurrent: bool,
    ) -> None:
        """Every rank that returned holds one checkpoint whole, the same on all of them: the
        load's case (``mismatches``) or another with the same keys (``others``); a rank that
        raised did so only where a save ran concurrently, naming the path."""
        raised = [r for r, result in enumerate(results) if result["raised"]]
        loaded = [r for r in range(len(results)) if r not in raised]
        errors = errors_of_calls(results)
        if raised and not concurrent:
            raise trial.fail(
                f"the load of a committed checkpoint raised on {ranks_text(raised)}",
                "\n".join(errors),
                kind="raised",
                errors=errors,
                rank=raised[0],
            )
        if raised and loaded:
            raise trial.fail(
                f"the load raised on {ranks_text(raised)} but returned on {ranks_text(loaded)}: the "
                "ranks of one job hold different states",
                "\n".join(errors),
                kind="wrong_error",
                errors=errors,
                rank=raised[0],
            )
        for r in raised:
            text = results[r]["text"]
            if path not in text and os.path.basename(path) not in text:
                raise trial.fail(
                    f"rank {r}'s load, concurrent with a save to the same path, raised without naming the path",
                    f"{error_line(results[r]['type'], text)}\n(expected the message to name {path})",
                    kind="wrong_error",
                    errors=errors,
                    rank=r,
                )
        if not loaded:
            return
        choices = len(results[loaded[0]].get("others", ())) + 1
        for choice in range(choices):
            if not any(_against(results[r], choice) for r in loaded):
                return  # one checkpoint, whole, on every rank that returned
        mismatches = [m for r in loaded for m in results[r]["mismatches"]]
        if not mismatches:  # each rank holds a whole checkpoint, but not the same one
            mismatches = [m for r in loaded for m in _against(results[r], 1)]
        trial.check_values(
            mismatches,
            "value(s) loaded are not those of one committed checkpoint"
            + (" (a save committed meanwhile; its values have other salts)" if concurrent else ""),
        )

    def _check_nothing_beside(self, trial: Trial) -> None:
        """``strict``: what is under the run's folder is the slots' checkpoints, nothing else."""
        if not self.strict or any(s.pending is not None for s in self.slots):
            return
        names = self.ckpt.backend.objects_at(self.root).names()
        slots = {f"ckpt-{i}" for i in range(SLOTS)}
        beside = sorted(n for n in names if n.split("/", 1)[0] not in slots)
        if beside:
            raise trial.fail(
                f"{len(beside)} object(s) left beside the checkpoints",
                f"under {self.root}, besides the checkpoints {sorted(slots)}:\n{listing(beside)}",
                kind="wrong_values",
                keys=tuple(beside[:20]),
            )


def _against(result: dict[str, Any], choice: int) -> list[Mismatch]:
    """A rank's mismatches against the load's case (``choice`` 0) or another checkpoint's."""
    if choice == 0:
        return result["mismatches"]
    return result["others"][choice - 1]
