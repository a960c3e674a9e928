"""Per-rank state: ranks that hold different keys, as real jobs do.

Pipeline stages hold their own layers, expert-parallel ranks their own experts, data loaders
their own state, sharded optimizers leave out the state of parameters whose local shard is
empty. The contract a correct backend keeps when keys differ by rank:

- a key saved by any rank is in the checkpoint;
- a key a destination rank asks for is missing only if no rank saved it;
- a key of the checkpoint is unexpected only if no destination rank holds it;
- a world that shrinks never drops per-rank state silently (strict: loading without a rank
  to hold some of the checkpoint's keys is an error on every rank);
- objects that differ from rank to rank under one key are an error, or each rank gets its
  own back (strict), never one rank's value given to all silently;
- a meta-device destination is never "success with nothing loaded";
- a save or load in a sub-group of the world, whose coordinator is not global rank 0, works,
  and two sub-groups saving different checkpoints at once each keep their own.

Beside these job-shaped families, the round-trip, placement-change and world-size-change tests
draw keys held by some ranks only (``Layout.ranks``: plain copies, a DTensor on a submesh, a
ShardedTensor placed on some ranks) among their cases.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from ...kit.cases import TensorSpec
from ...kit.jobs import (
    Holding,
    PerRankCase,
    PerRankObject,
    expert_cases,
    omitted_state_cases,
    pipeline_cases,
    some_ranks_cases,
)
from ...kit.profiles import property_test
from ...kit.trial import Trial, errors_of
from . import ranks

__all__ = ["PerRankTests"]


def _check(ckpt, case: PerRankCase) -> None:
    ckpt.trial(case).save_then_load(
        case, ckpt.path(), save=ranks.save_per_rank, load=ranks.load_per_rank
    )


@pytest.mark.ckpt_suite("per_rank")
@pytest.mark.ckpt_level("core")
class PerRankTests:
    """Keys held by some ranks only: saved, found, and loaded by whichever ranks hold them."""

    @property_test()
    def test_pipeline_stages(self, ckpt, data):
        """Layers split into pipeline stages (rank r holds its stage's layers and its loader
        state), loaded under the same split, another stage count, or all on one rank."""
        ckpt_case = data.draw(pipeline_cases(ckpt.backend), label="case")
        _check(ckpt, ckpt_case)

    @property_test()
    def test_expert_parallel(self, ckpt, data):
        """Experts split over the ranks, a router every rank holds; loaded with the experts
        split over the same or another number of ranks."""
        case = data.draw(expert_cases(ckpt.backend), label="case")
        _check(ckpt, case)

    @pytest.mark.ckpt_requires("dtensor", "uneven_shards")
    @property_test()
    def test_optimizer_omits_state_of_empty_shards(self, ckpt, data):
        """Parameters sharded over every rank, and optimizer state that a rank with an empty
        local shard leaves out of its state dict: saved and loaded in that layout."""
        case = data.draw(omitted_state_cases(ckpt.backend), label="case")
        _check(ckpt, case)

    @property_test()
    def test_keys_held_by_some_ranks(self, ckpt, data):
        """Tensors (plain copies, or DTensors on a mesh of their holders) and objects held by
        all, some or one of the ranks, loaded by another drawn set of holders."""
        case = data.draw(some_ranks_cases(ckpt.backend), label="case")
        _check(ckpt, case)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("objects", "strict_keys", "world_size_change")
    @property_test(max_examples=lambda n: max(3, n // 4))
    def test_a_shrunk_world_does_not_drop_per_rank_state(self, ckpt, data):
        """Per-rank loader state of N ranks, loaded on M < N ranks that hold only their own:
        the keys of ranks M..N-1 would be dropped, so every rank raises, naming one; the same
        load with every key held by some rank (the control) gives every value."""
        saved_world = data.draw(st.sampled_from([2, 3, 4]), label="saved on")
        load_world = data.draw(st.integers(1, saved_world - 1), label="loaded on")
        objects = tuple(
            PerRankObject(f"loader.rank{r}", ("pos", r, "epoch", 3), (r,), (r,))
            for r in range(saved_world)
        )
        dropping = PerRankCase("loader state", (), saved_world, load_world, (), (), objects)
        trial, path = ckpt.trial(dropping), ckpt.path()
        trial.run("save", ranks.save_per_rank, dropping, path, world=saved_world)
        kept = tuple(o for o in objects if o.saved_by[0] < load_world)
        loading = PerRankCase("loader state", (), saved_world, load_world, (), (), kept)
        outcomes = trial.outcomes("load", ranks.load_per_rank, loading, path, world=load_world)
        dropped = [o.key for o in objects if o not in kept]
        quiet = [o.rank for o in outcomes if not o.raised]
        unnamed = [
            o.rank for o in outcomes if o.raised and not any(k in o.message for k in dropped)
        ]
        if quiet or unnamed:
            raise trial.fail(
                f"a load on {load_world} rank(s) that drops the state of rank(s) "
                f"{list(range(load_world, saved_world))} must raise on every rank, naming a "
                "dropped key",
                f"dropped: {dropped}\n"
                + "\n".join(
                    f"  rank {o.rank}: "
                    + (f"raised {o.error_type}: {o.message[-300:]}" if o.raised else "no error")
                    for o in outcomes
                ),
                kind="no_error" if quiet else "wrong_error",
                errors=errors_of(outcomes),
                rank=(quiet or unnamed)[0],
                key=dropped[0],
            )
        everything = tuple(
            PerRankObject(o.key, o.value, o.saved_by, (o.saved_by[0] % load_world,))
            for o in objects
        )
        control = PerRankCase(
            "loader state (control)", (), saved_world, load_world, (), (), everything
        )
        loaded = trial.run("load (control)", ranks.load_per_rank, control, path, world=load_world)
        trial.check_values([m for r in loaded for m in r], "value(s) differ in the control")

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("objects", "replica_check")
    def test_objects_differing_between_ranks_under_one_key(self, ckpt):
        """Two ranks save different objects under one key: the save raises on every rank
        naming the key, or each rank loads its own value back; never one rank's value given
        to every rank silently."""
        key = "loader.state"
        trial, path = ckpt.trial(f"{key!r}: ('seen_by', r) on ranks 0 and 1"), ckpt.path()
        outcomes = trial.run("save", ranks.save_divergent_object, key, path, world=2)
        if all(o["raised"] and key in o["text"] for o in outcomes):
            return
        if any(o["raised"] for o in outcomes):
            raise trial.fail(
                "a save of objects that differ under one key raised on some ranks only, or "
                "without naming the key",
                "\n".join(f"  rank {r}: {o}" for r, o in enumerate(outcomes)),
                kind="wrong_error",
                key=key,
            )
        got = trial.run("load", ranks.load_divergent_object, key, path, world=2)
        wrong = [r for r in range(2) if got[r] != ("seen_by", r)]
        if wrong:
            raise trial.fail(
                "objects that differ under one key were saved without an error and not kept per "
                "rank: a rank got another rank's value",
                "\n".join(f"  rank {r} loaded {got[r]!r}" for r in range(2)),
                kind="wrong_values",
                rank=wrong[0],
                key=key,
                expected=("seen_by", wrong[0]),
                actual=got[wrong[0]],
            )

    def test_meta_device_destination_is_never_a_silent_no_op(self, ckpt):
        """A destination tensor on the meta device: the load raises on every rank, or leaves a
        real tensor with the saved values in the state dict; never success with nothing
        loaded."""
        spec = TensorSpec("w", (4,), "float32", salt=0)
        case = PerRankCase(
            "meta destination",
            (spec, TensorSpec("b", (2,), "float32", 1)),
            2,
            2,
            (Holding((0, 1)),) * 2,
            (Holding((0, 1)),) * 2,
        )
        trial, path = (
            ckpt.trial("'w': float32[4] plain on 2 ranks, loaded into a meta tensor"),
            ckpt.path(),
        )
        trial.run("save", ranks.save_per_rank, case, path, world=2)
        outcomes = trial.run("load (into meta tensors)", ranks.load_into_meta, path, world=2)
        bad = [
            r
            for r, o in enumerate(outcomes)
            if not o["raised"] and o.get("values") != [0.0, 7.0, 14.0, 21.0]
        ]
        mixed = len({o["raised"] for o in outcomes}) > 1
        if bad or mixed:
            raise trial.fail(
                "a load into a meta-device tensor must raise on every rank, or put the loaded "
                "values in the state dict",
                "\n".join(f"  rank {r}: {o}" for r, o in enumerate(outcomes)),
                kind="wrong_error" if mixed else "wrong_values",
                rank=(bad or [0])[0],
                key="w",
            )

    @pytest.mark.parametrize(
        "groups",
        [pytest.param([[1, 3]], id="ranks-1-3"), pytest.param([[2, 3]], id="ranks-2-3")],
    )
    def test_a_sub_group_whose_coordinator_is_not_rank_0(self, ckpt, groups):
        """Save and load with ``process_group=`` a sub-group of a 4-rank world that leaves out
        global rank 0: its coordinator is group rank 0, another global rank."""
        self._check_groups(ckpt, groups)

    def test_two_sub_groups_save_different_checkpoints_at_once(self, ckpt):
        """Ranks {0, 1} and {2, 3} save two different states to two paths at the same time,
        each in its own sub-group: each checkpoint holds its own group's state."""
        self._check_groups(ckpt, [[0, 1], [2, 3]])

    @staticmethod
    def _check_groups(ckpt, groups: list[list[int]]) -> None:
        cases = [
            PerRankCase(
                f"sub-group {g}",
                (
                    TensorSpec(f"g{i}.w", (3, 2), "float32", 10 * i + 1),
                    TensorSpec(f"g{i}.b", (2,), "float64", 10 * i + 2),
                ),
                len(g),
                len(g),
                (Holding(tuple(range(len(g)))), Holding((len(g) - 1,))),
                (Holding(tuple(range(len(g)))), Holding((len(g) - 1,))),
            )
            for i, g in enumerate(groups)
        ]
        trial: Trial = ckpt.trial("\n".join(c.describe() for c in cases))
        paths = [ckpt.path() for _ in groups]
        trial.run("save (in sub-groups)", ranks.save_in_sub_groups, groups, cases, paths, world=4)
        loaded = trial.run(
            "load (in sub-groups)", ranks.load_in_sub_groups, groups, cases, paths, world=4
        )
        trial.check_values(
            [m for rank in loaded for m in rank],
            "value(s) loaded in a sub-group differ from what it saved",
        )
