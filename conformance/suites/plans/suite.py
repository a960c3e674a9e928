"""Plan validation: the backend's planners, run at the planner level on simulated worlds.

No processes: every simulated rank has its own planner and state (shape-only values
where no data is needed), so cases reach hundreds of ranks and the scale cases 1,000+.
The planners are the backend's, or DCP's default ones when it gives none. Simulated
DTensor and ShardedTensor values reach them as tensors implementing DCP's checkpointable
protocol (``harness.simulated.SimulatedShards``), as DTensor itself does.

core: the metadata describes exactly the saved state; replicated chunks are written
once, by a rank that holds them, and the writes tile every tensor; planning is
deterministic; ``create_global_plan`` accepts valid plans and rejects overlapping,
out-of-bounds, gapped (on two or more ranks) and duplicated writes; a load plan reads
every destination element once, from a saved chunk that holds it; 1,000+ ranks plan.
strict: ``create_global_plan`` also rejects ranks that disagree on a tensor's global
size or dtype, and a gap in a single rank's plan. The reference's
``validate_global_plan``, the oracle these checks lean on, must name every defect.
"""

from __future__ import annotations

import math

import pytest
from ckptconf.reference import validate_global_plan
from hypothesis import strategies as st

from ...backend import Backend
from ...kit.failures import error_of
from ...kit.profiles import property_test
from ...kit.strategies import ALL_DTYPES, BASIC_DTYPES
from ...kit.trial import Trial
from .cases import DEFECTS, PlanCase, PlanStateCase, SimLayout, SimTensor
from .checks import (
    canonical_plans,
    dedup_problems,
    loaded_value_problems,
    metadata_differences,
    metadata_problems,
    plan_differences,
    read_plan_problems,
)
from .planning import (
    PlannerSetUpError,
    coordinator_planner,
    failure,
    plan_save,
    save_then_load_in_memory,
)
from .states import build_states
from .strategies import broken_save_plans, plan_reshard_cases, plan_state_cases, valid_save_plans

__all__ = ["PlansTests"]

_SIM_WORLDS = (1, 2, 3, 4, 8, 16, 64)


def _defect_params():
    return [
        pytest.param(name, id=name, marks=pytest.mark.ckpt_level(d.level))
        for name, d in DEFECTS.items()
    ]


def _protocol(backend: Backend) -> bool:
    """Whether sharded values can reach the planner: simulated DTensor and ShardedTensor values
    are tensors implementing DCP's checkpointable protocol."""
    return backend.supports("checkpointable")


def _kinds(backend: Backend) -> tuple[str, ...]:
    kinds = ["plain"]
    if backend.supports("dtensor") and _protocol(backend):
        kinds.append("mesh")
    if backend.supports("sharded_tensor") and _protocol(backend):
        kinds.append("chunks")
    return tuple(kinds)


def _state_cases(backend: Backend, *, worlds=_SIM_WORLDS, **options) -> st.SearchStrategy:
    return plan_state_cases(
        worlds=worlds,
        kinds=_kinds(backend),
        dtypes=ALL_DTYPES if backend.supports("dtypes") else BASIC_DTYPES,
        objects=backend.supports("objects"),
        allow_empty=backend.supports("empty_tensors"),
        min_dims=0 if backend.supports("scalar_tensors") else 1,
        **options,
    )


@pytest.mark.ckpt_suite("plans")
class PlansTests:
    """The backend's save and load planners on simulated worlds of 1 to 2,048 ranks."""

    # 1-3: what a planner makes of a state

    @pytest.mark.ckpt_level("core")
    @property_test()
    def test_metadata_covers_the_state(self, ckpt, data):
        """Every key with its global size and dtype, objects as bytes, no extra key, and the
        chunks of each tensor tile it exactly once, in bounds."""
        factory = ckpt.save_planner()
        case = data.draw(_state_cases(ckpt.backend), label="case")
        trial = ckpt.trial(case)
        result = plan_save(trial, _states(ckpt, case), factory)
        problems = metadata_problems(case, result.metadata)
        if problems:
            raise failure(
                trial, "the global plan's metadata does not describe the saved state", problems
            )

    @pytest.mark.ckpt_level("core")
    @property_test()
    def test_dedup_writes_each_chunk_once(self, ckpt, data):
        """Each chunk (replicated or not) is written by exactly one rank that holds it, none is
        lost, and the final write items of all ranks cover every element once."""
        factory = ckpt.save_planner()
        case = data.draw(_state_cases(ckpt.backend), label="case")
        trial = ckpt.trial(case)
        result = plan_save(trial, _states(ckpt, case), factory)
        problems = dedup_problems(result.local_plans, result.global_plan, result.metadata)
        if problems:
            raise failure(
                trial, "the final plans do not write every held chunk exactly once", problems
            )

    @pytest.mark.ckpt_level("core")
    @property_test()
    def test_plans_are_deterministic(self, ckpt, data):
        """The same state planned twice, by fresh planners, gives the same final plans (per
        rank, as sorted items) and the same metadata."""
        factory = ckpt.save_planner()
        case = data.draw(_state_cases(ckpt.backend, worlds=(2, 3, 4, 8, 16)), label="case")
        trial = ckpt.trial(case)
        first = plan_save(trial, _states(ckpt, case), factory)
        second = plan_save(trial, _states(ckpt, case), factory)
        problems = plan_differences(
            canonical_plans(first.global_plan), canonical_plans(second.global_plan)
        )
        a, b = first.metadata.state_dict_metadata, second.metadata.state_dict_metadata
        if a != b:
            problems += [
                f"metadata of key {k!r} differs: {a.get(k)} vs {b.get(k)}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        if problems:
            raise failure(trial, "planning the same state twice gave different plans", problems)

    # 4: validation of global plans

    @pytest.mark.ckpt_level("core")
    @property_test()
    def test_accepts_valid_plans(self, ckpt, data):
        """``create_global_plan`` of valid local plans (each chunk held by one rank) does not
        raise, keeps every item on its rank, and describes them in its metadata."""
        factory = ckpt.save_planner()
        case = data.draw(valid_save_plans(objects=ckpt.supports("objects")), label="plans")
        _accepted(ckpt.trial(case), factory, case)

    @pytest.mark.parametrize("kind", _defect_params())
    @property_test()
    def test_rejects_broken_plan(self, ckpt, data, kind):
        """``create_global_plan`` raises for local plans with the named defect (across two or
        more ranks for a gap or a size or dtype disagreement); for a duplicated write it may
        instead keep one copy. The rejection counts only if the same planner accepts the
        plan without the defect, and the error comes from ``create_global_plan``."""
        factory = ckpt.save_planner()
        case = data.draw(
            broken_save_plans(
                kind=kind, min_ranks=DEFECTS[kind].min_ranks, objects=ckpt.supports("objects")
            ),
            label="plans",
        )
        _check_rejected(ckpt.trial(case), factory, case)

    @pytest.mark.ckpt_level("strict")
    @property_test()
    def test_rejects_gap_on_one_rank(self, ckpt, data):
        """A single rank's plan that leaves part of a tensor unwritten is rejected too."""
        factory = ckpt.save_planner()
        case = data.draw(
            broken_save_plans(kind="gap", max_ranks=1, objects=ckpt.supports("objects")),
            label="plans",
        )
        _check_rejected(ckpt.trial(case), factory, case)

    @pytest.mark.ckpt_level("core")
    @pytest.mark.parametrize("kind", list(DEFECTS))
    @property_test()
    def test_reference_oracle_names_each_defect(self, ckpt, data, kind):
        """The reference's ``validate_global_plan``, which these checks lean on, names every
        injected defect with its key (backend-independent: the suite's own oracle)."""
        ckpt.save_planner()  # not applicable where no planner is (skips)
        case = data.draw(broken_save_plans(kind=kind), label="plans")
        problems = validate_global_plan(case.save_plans(), case.metadata())
        word = DEFECTS[kind].oracle_word
        if not any(word in p and repr(case.key) in p for p in problems):
            raise failure(
                ckpt.trial(case),
                f"the reference validate_global_plan does not name the {kind} on key {case.key!r}",
                problems or ["(it found no problem)"],
            )

    @pytest.mark.ckpt_level("core")
    @property_test()
    def test_reference_oracle_accepts_valid_plans(self, ckpt, data):
        """The reference's ``validate_global_plan`` finds no problem in a valid plan."""
        ckpt.save_planner()  # not applicable where no planner is (skips)
        case = data.draw(valid_save_plans(), label="plans")
        problems = validate_global_plan(case.save_plans(), case.metadata())
        if problems:
            raise failure(
                ckpt.trial(case),
                "the reference validate_global_plan rejects a valid plan",
                problems,
            )

    # 5: load planning

    @pytest.mark.ckpt_level("core")
    @pytest.mark.ckpt_requires("resharding", "world_size_change")
    @property_test()
    def test_load_plan_reads_every_element_once(self, ckpt, data):
        """Saved under layout A on N ranks, loaded under layout B on M ranks (N, M up to 200):
        the read items cover every destination element once, each from a saved chunk that
        holds it, and the loaded values are the saved ones."""
        worlds = (1, 2, 3, 4, 7, 16, 64, 200)
        backend = ckpt.backend
        saved, dest = data.draw(
            plan_reshard_cases(
                save_worlds=worlds,
                load_worlds=worlds,
                kinds=_kinds(backend),
                objects=backend.supports("objects"),
                allow_empty=backend.supports("empty_tensors"),
                min_dims=0 if backend.supports("scalar_tensors") else 1,
                max_side=24,
            ),
            label="case",
        )
        _check_simulated_reshard(ckpt, saved, dest)

    @pytest.mark.ckpt_level("core")
    @pytest.mark.ckpt_requires(
        "resharding", "world_size_change", "dtensor", "strided_shard", "checkpointable"
    )
    @property_test()
    def test_strided_shard_plans(self, ckpt, data):
        """As above, with ``_StridedShard`` among the mesh placements on either side (several
        pieces per rank, as FSDP2 over TP lays them out) on up to 64 simulated ranks; the
        saved metadata must also tile each tensor exactly."""
        worlds = (2, 4, 6, 8, 16, 64)
        saved, dest = data.draw(
            plan_reshard_cases(
                save_worlds=worlds,
                load_worlds=worlds,
                kinds=("plain", "mesh"),
                objects=False,
                allow_empty=ckpt.supports("empty_tensors"),
                min_dims=1,
                max_side=24,
                strided=True,
            ),
            label="case",
        )
        _check_simulated_reshard(ckpt, saved, dest, check_metadata=True)

    # 6: scale

    @pytest.mark.ckpt_level("core")
    @pytest.mark.parametrize(
        "layout",
        [
            pytest.param((32, 32), id="1024-ranks-2d"),
            pytest.param((2048,), id="2048-ranks-1d"),
            pytest.param(
                "bricks",
                id="2048-ranks-bricks",
                marks=pytest.mark.ckpt_requires("sharded_tensor", "checkpointable"),
            ),
            pytest.param(
                "strided",
                id="1024-ranks-strided",
                marks=pytest.mark.ckpt_requires("dtensor", "strided_shard", "checkpointable"),
            ),
        ],
    )
    def test_plans_at_scale(self, ckpt, layout):
        """A shape-only state on 1,024 or 2,048 simulated ranks plans and validates: its
        metadata describes the state and every chunk is written once. ``bricks``: 2,048
        chunks whose column cuts differ from row block to row block (no regular grid).
        ``strided``: FSDP2 over TP on a 32 x 32 mesh (``_StridedShard`` then ``Shard`` on one
        dim: one piece per rank, not where ``Shard, Shard`` puts it) and a ``_StridedShard``
        alone (four pieces per rank)."""
        factory = ckpt.save_planner()
        if layout == "bricks":
            case = _bricks_case()
        elif layout == "strided":
            case = _strided_scale_case()
        else:
            case = _scale_case(ckpt.backend, layout)
        trial = ckpt.trial(case)
        result = plan_save(trial, _states(ckpt, case), factory)
        problems = metadata_problems(case, result.metadata)
        problems += dedup_problems(result.local_plans, result.global_plan, result.metadata)
        if problems:
            raise failure(trial, f"the plan of {case.world} simulated ranks is wrong", problems)


def _set_up(trial: Trial, factory):
    """The coordinator planner and its planner_data; a planner that cannot be set up fails the
    trial (no plan was judged)."""
    try:
        return coordinator_planner(factory)
    except PlannerSetUpError as exc:
        raise trial.fail(
            "the save planner could not be made and set up",
            str(exc),
            kind="raised",
            step="plan",
            errors=(error_of(exc.__cause__ or exc),),
        ) from None


def _accepted(trial: Trial, factory, case: PlanCase, *, what: str = "a valid plan") -> None:
    """``create_global_plan`` accepts ``case`` unchanged: no error, every item kept on its
    rank, the metadata describing exactly the plan."""
    planner, template = _set_up(trial, factory)
    try:
        plans, metadata = planner.create_global_plan(case.save_plans(template))
    except Exception as exc:  # noqa: BLE001 - any error is the finding
        raise trial.raised(f"create_global_plan rejected {what}", exc, step="plan") from None
    problems = metadata_differences(case.metadata(), metadata)
    problems += dedup_problems(case.save_plans(), plans, metadata)
    if problems:
        raise failure(trial, f"create_global_plan changed {what}", problems)


def _check_rejected(trial: Trial, factory, case: PlanCase) -> None:
    """``create_global_plan`` rejects the broken ``case`` (or, for a duplicated write, returns a
    valid plan writing one copy), and accepts its valid counterpart."""
    valid = case.valid()
    _accepted(
        trial.about(f"{valid.describe()}\n(the valid counterpart of:)\n{case.describe()}"),
        factory,
        valid,
        what="the valid plan the defect was injected into (the control)",
    )
    planner, template = _set_up(trial, factory)
    try:
        plans, metadata = planner.create_global_plan(case.save_plans(template))
    except Exception:  # noqa: BLE001 - rejected by create_global_plan, as it must be
        return
    if case.defect == "duplicate_write":
        problems = validate_global_plan(plans, metadata)
        problems += dedup_problems(case.save_plans(), plans, metadata)
        if not problems:
            return  # deduplicated: one copy written
        what = "create_global_plan accepted a duplicated write and returned an invalid plan"
    else:
        what = f"create_global_plan accepted a plan with {DEFECTS[case.defect].title}"
        problems = [f"it returned metadata {_entry(metadata, case.key)}"]
        problems += [
            f"the reference validate_global_plan finds in it: {p}"
            for p in validate_global_plan(plans, metadata)
        ]
        problems.append(f"DCP's _validate_global_plan finds in it: {_dcp_verdict(plans, metadata)}")
    raise failure(trial, what, problems, kind="no_error")


def _states(ckpt, case: PlanStateCase, *, data: str = "meta") -> list[dict]:
    """Every simulated rank's state for ``case``: flat for a backend taking flat state dicts only."""
    return build_states(case, data=data, nested=ckpt.supports("nested_state_dicts"))


def _check_simulated_reshard(
    ckpt, saved: PlanStateCase, dest: PlanStateCase, *, check_metadata: bool = False
) -> None:
    """Plan a save of ``saved`` and a load into ``dest`` in memory; fail on read items that do
    not cover every destination element once, wrong loaded values or (``check_metadata``) saved
    metadata that does not describe ``saved``."""
    trial = ckpt.trial(f"saved: {saved.describe()}\nloaded: {dest.describe()}")
    dest_states = _states(ckpt, dest, data="sentinel")
    try:
        metadata, plans = save_then_load_in_memory(
            _states(ckpt, saved, data="encoded"),
            dest_states,
            ckpt.save_planner(),
            ckpt.load_planner(),
        )
    except Exception as exc:  # noqa: BLE001 - any planner error is the finding
        raise trial.raised("a simulated save or load raised", exc, step="simulate") from None
    problems = metadata_problems(saved, metadata) if check_metadata else []
    if problems:
        raise failure(
            trial, "the saved metadata does not describe the state", problems, step="simulate"
        )
    problems = read_plan_problems(plans, dest_states, metadata)
    if problems:
        raise failure(
            trial, "the load plans do not read every element once", problems, step="simulate"
        )
    problems = loaded_value_problems(dest, dest_states)
    if problems:
        raise failure(trial, "loaded values differ from the saved ones", problems, step="simulate")


def _dcp_verdict(plans, metadata) -> str:
    """What DCP's own validation says (its result is a bool in older torch, a list of errors in
    newer: told apart by type, not by version)."""
    try:
        from torch.distributed.checkpoint.default_planner import _validate_global_plan
    except ImportError:
        return "(not available in this torch)"
    from ckptconf.reference.compat import dcp_validation_errors

    errors = dcp_validation_errors(_validate_global_plan(plans, metadata))
    return "; ".join(errors) if errors else "no error"


def _entry(metadata, key: str | None) -> str:
    entry = metadata.state_dict_metadata.get(key)
    if entry is None:
        return f"without key {key!r}"
    chunks = getattr(entry, "chunks", None)
    if chunks is None:
        return f"{key!r}: {type(entry).__name__}"
    shown = ", ".join(f"{tuple(c.offsets)}+{tuple(c.sizes)}" for c in chunks[:8])
    return f"{key!r}: {entry.properties.dtype}{list(entry.size)} chunks {shown}"


def _scale_case(backend: Backend, mesh: tuple[int, ...]) -> PlanStateCase:
    """Sharded, replicated, submesh, chunk-list and plain tensors and an object on prod(mesh) ranks."""
    world = math.prod(mesh)
    shard_all = tuple(f"S{d}" for d in range(len(mesh)))
    tensors = [SimTensor(("model", "norm"), (64,), "float32", SimLayout())]
    if backend.supports("dtensor") and _protocol(backend):
        tensors += [
            SimTensor(("model", "w"), (3000, 96), "bfloat16", SimLayout("mesh", mesh, shard_all)),
            SimTensor(
                ("model", "emb"),
                (1000, 8),
                "float32",
                SimLayout("mesh", mesh, ("S0",) + ("R",) * (len(mesh) - 1)),
            ),
            SimTensor(
                ("model", "head"),
                (50, 7),
                "float32",
                SimLayout("mesh", (world // 2,), ("S1",), first_rank=world // 2),
            ),
        ]
    if backend.supports("sharded_tensor") and _protocol(backend):
        rows = -(-1500 // world)
        chunks = tuple(
            (r, (min(r * rows, 1500), 0), (max(0, min(1500, (r + 1) * rows) - r * rows), 4))
            for r in range(world)
        )
        tensors.append(
            SimTensor(("opt", "exp_avg"), (1500, 4), "float32", SimLayout("chunks", chunks=chunks))
        )
    objects = ((("opt", "step"), 1000),) if backend.supports("objects") else ()
    return PlanStateCase(world, tuple(tensors), objects)


def _strided_scale_case(dp: int = 32, tp: int = 32) -> PlanStateCase:
    """Weights of a model on ``dp * tp`` ranks as FSDP2 over TP shards them: dim 0 split by TP,
    each TP part split again by FSDP (``_StridedShard(0, split_factor=tp)`` then ``Shard(0)``),
    including a side that does not divide evenly; and optimizer state under a ``_StridedShard``
    of split factor 4 alone, which gives every rank four pieces."""
    mesh, placements = (dp, tp), (f"SS0x{tp}", "S0")
    tensors = (
        SimTensor(("model", "w"), (4096, 64), "bfloat16", SimLayout("mesh", mesh, placements)),
        SimTensor(("model", "emb"), (1000, 8), "float32", SimLayout("mesh", mesh, placements)),
        SimTensor(("model", "norm"), (64,), "float32", SimLayout()),
        SimTensor(("opt", "m"), (30, 1000), "float32", SimLayout("mesh", mesh, ("R", "SS1x4"))),
    )
    return PlanStateCase(dp * tp, tensors)


def _bricks_case(
    blocks: int = 64, per_block: int = 32, rows: int = 4, width: int = 4096
) -> PlanStateCase:
    """One tensor on ``blocks * per_block`` ranks: row block b is cut into ``per_block`` chunks
    at columns shifted by a different amount per block, like courses of bricks."""
    piece = width // per_block
    chunks = []
    for b in range(blocks):
        shift = (b * 37) % piece
        cuts = [0] + [k * piece + shift for k in range(1, per_block)] + [width]
        for k, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
            chunks.append((b * per_block + k, (b * rows, lo), (rows, hi - lo)))
    layout = SimLayout("chunks", chunks=tuple(chunks))
    tensor = SimTensor(("opt", "exp_avg"), (blocks * rows, width), "float32", layout)
    return PlanStateCase(blocks * per_block, (tensor,))
