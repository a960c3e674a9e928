"""Crash states: wherever a save stops, the folder holds the old checkpoint or the new one.

strict (``atomic_commit``), for backends that save into a local folder: checkpoint A is
saved, then checkpoint B is saved to the same path while strace records every
file-system call of every rank (:mod:`ckptconf.harness.crash.recording`). From the recording, the states a
crash could leave are rebuilt (:mod:`ckptconf.harness.crash.states`) under two models: a process crash after
any prefix of the operations, and a power loss after any prefix in which everything not
yet made durable by fsync is dropped. Each state is loaded with the backend's reader:

- before the save of B returned: A exactly or B exactly on every rank, never an error
  (A lost), a mix of A and B, or a wrong value;
- after it returned, under power loss: B exactly (what was reported saved is durable);
- where there was no A (a first save): B exactly, or an error on every rank.

The first bad state fails the test, with the operations that led to it and whose bytes
each file holds. Where strace is missing or may not trace, or the save made a call the
model cannot replay (a shared writable mmap, sendfile), the tests are unsupported.
This is ALICE's method (Pillai et al., OSDI '14) applied to distributed checkpoints.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from ckptconf.harness.crash.filetree import Files, FileTree, Operation
from ckptconf.harness.crash.operations import UnreplayableCall, file_operations
from ckptconf.harness.crash.recording import recorder_unavailable
from ckptconf.harness.crash.states import (
    MODELS,
    CrashState,
    crash_states,
    describe_files,
    materialise,
)
from ckptconf.harness.crash.syscalls import TraceSyntaxError, TruncatedString, read_trace_files
from hypothesis import Phase

from ...kit import values
from ...kit.cases import SaveLoadCase, resalted
from ...kit.layouts import small_layout_examples
from ...kit.outcomes import unsupported
from ...kit.profiles import property_test
from . import ranks
from .cases import crash_cases, plain_case, state_budget

__all__ = ["CrashStatesTests"]

_TIMEOUT = 60.0
_PER_STATE = 5.0  # seconds more for the loads step, per state
# every example records a save under strace and loads dozens of states: few examples, and no
# shrinking (the drawn cases are small already)
_SETTINGS: dict[str, Any] = dict(
    max_examples=lambda n: max(2, n // 8),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    # every layout class crash_cases draws, each world's in one case (A), B a small plain state
    pinned=small_layout_examples(
        (1, 2), label="A and B", wrap=lambda case: (case, resalted(plain_case(case.save_world)))
    ),
)


def _recordable(ckpt) -> None:
    reason = recorder_unavailable()
    if reason is not None:
        unsupported(reason)
    where = ckpt.backend.objects_at(ckpt.path())
    if not where.local:
        unsupported(
            f"it stores checkpoints elsewhere than in local files ({where.where()}), and only "
            "local file-system calls are recorded"
        )


def _verdict(state: CrashState, outcomes: list[dict[str, Any]], had_old: bool) -> str | None:
    """What is wrong with the loads of one state on every rank, or ``None``."""
    held = [o["holds"] for o in outcomes]
    if len(set(held)) > 1:
        return "ranks hold different checkpoints (a mix): " + ", ".join(
            f"rank {r}: {_held(o)}" for r, o in enumerate(outcomes)
        )
    got, first = held[0], outcomes[0]
    if state.returned and got != "B":
        return f"the save of B had returned, but on every rank {_held(first)}"
    if got != "neither":
        return None
    if not had_old:
        if all(o["raised"] for o in outcomes):
            return None  # nothing loads: a first save that did not finish
        return f"neither B nor an error: {_held(first)}"
    what = "A is lost" if all("raised" in o["as_a"] for o in outcomes) else "neither A nor B"
    return f"{what}: {_held(first)}"


def _held(outcome: dict[str, Any]) -> str:
    if outcome["holds"] != "neither":
        return f"{outcome['holds']} loads exactly"
    tail = f"; loaded as A, it {outcome['as_a'][-700:]}" if outcome["as_a"] else ""
    return f"loaded as B, it {outcome['as_b'][-700:]}{tail}"


class _Run:
    """One example: A (or nothing) at a path, B saved over it under strace, the crash states."""

    def __init__(self, ckpt, old: SaveLoadCase | None, new: SaveLoadCase, model: str):
        self.old, self.new, self.model = old, new, model
        self.profile = ckpt.session.profile
        self.resave = old is not None
        about = [f"{MODELS[model]} during {'a re-save' if self.resave else 'a first save'}"]
        if old is not None:
            about.append(f"A (saved first):\n{old.describe()}")
        about.append(f"B (saved over it, under strace):\n{new.describe()}")
        self.trial = ckpt.trial("\n".join(about), timeout=_TIMEOUT)
        self.folders = [Path(ckpt.path()) for _ in range(3)]
        self.root, self.traces, self.loads = self.folders
        self.moved = self.root.with_name(self.root.name + "-after-save")
        self.path = str(self.root / "checkpoint")

    def check(self) -> None:
        """Run the example; its folders are removed unless it fails (the failing state is kept)."""
        try:
            self._check()
        except pytest.skip.Exception:
            self._remove()
            raise
        self._remove()

    def _remove(self) -> None:
        for folder in (*self.folders, self.moved):
            shutil.rmtree(folder, ignore_errors=True)

    def _check(self) -> None:
        trial, world = self.trial, self.new.save_world
        self.root.mkdir(parents=True)
        if self.old is not None:
            trial.run("save (of A)", values.save_case, self.old, self.path, world=world)
        before = FileTree.from_folder(self.root)
        recorded = trial.run(
            "save (of B, under strace)",
            ranks.save_recorded,
            self.new,
            self.path,
            str(self.traces),
            world=world,
        )
        unavailable = [r["unavailable"] for r in recorded if "unavailable" in r]
        if unavailable:
            unsupported(unavailable[0])
        operations, after = self._operations(
            before, {r: rec["cwd"] for r, rec in enumerate(recorded)}
        )
        states = crash_states(before, operations, self.model, state_budget(self.profile))
        paths = [str(Path(p) / "checkpoint") for p in materialise(states, self.loads)]
        # out of the way: a reader that follows absolute paths must not find the saved files
        self.root.rename(self.moved)
        results = trial.run(
            f"load (of {len(states)} crash states)",
            ranks.load_states,
            self.old,
            self.new,
            paths,
            world=world,
            timeout=_TIMEOUT + _PER_STATE * len(states),
        )
        old = before.visible() if self.resave else None
        for i, state in enumerate(states):
            outcomes = [per_rank[i] for per_rank in results]
            problem = _verdict(state, outcomes, self.resave)
            if problem is not None:
                raise trial.fail(
                    f"{state.headline(operations)}: {problem}",
                    f"the operations up to the crash:\n{state.history(operations)}\n"
                    f"the files it leaves (A: the checkpoint before; B: the one being saved):\n"
                    f"{describe_files(state.files, old, after)}\n"
                    f"({len(states)} distinct states built from {len(operations)} operations; "
                    f"this is state {i + 1}, kept at {paths[i]})",
                    kind="wrong_values",
                )

    def _operations(self, before: FileTree, cwd: dict[int, str]) -> tuple[list[Operation], Files]:
        calls = []
        for rank in range(self.new.save_world):
            calls += read_trace_files(self.traces / f"rank{rank}", rank)
        tree = before.copy()
        try:
            operations = file_operations(calls, str(self.root), tree, cwd)
        except (UnreplayableCall, TruncatedString) as exc:
            unsupported(f"its save made a call the crash model cannot replay: {exc}")
        except (TraceSyntaxError, LookupError, ValueError) as exc:  # ckptconf's, not the backend's
            unsupported(
                f"ckptconf could not replay this strace recording ({type(exc).__name__}: {exc}); "
                "please report it to ckptconf"
            )
        after = FileTree.from_folder(self.root).visible()
        replayed = tree.visible()
        if replayed != after:
            differ = sorted(p for p in {*after, *replayed} if after.get(p, 0) != replayed.get(p, 0))
            unsupported(
                "replaying the recorded calls does not give the folder its save left "
                f"({', '.join(differ[:5])} differ): it writes in a way strace does not show"
            )
        if not operations:
            unsupported("its save wrote nothing under the checkpoint's folder")
        return operations, after


@pytest.mark.ckpt_suite("crash_states")
@pytest.mark.ckpt_requires("atomic_commit")
class CrashStatesTests:
    """Every crash state of a recorded save, under a process crash and a power loss."""

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.parametrize("model", sorted(MODELS))
    @property_test(**_SETTINGS)
    def test_crash_during_a_resave_leaves_the_old_or_the_new(self, ckpt, model, data):
        """A crash anywhere in a re-save leaves A or B, whole; a power loss after it returned, B."""
        _recordable(ckpt)
        old, new = data.draw(crash_cases(ckpt.backend), label="A and B")
        _Run(ckpt, old, new, model).check()

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.parametrize("model", sorted(MODELS))
    @property_test(**_SETTINGS)
    def test_crash_during_a_first_save_leaves_the_new_or_nothing(self, ckpt, model, data):
        """A crash anywhere in a first save leaves B whole or nothing that loads; a power loss
        after it returned, B."""
        _recordable(ckpt)
        _, new = data.draw(crash_cases(ckpt.backend), label="A and B")
        _Run(ckpt, None, new, model).check()
