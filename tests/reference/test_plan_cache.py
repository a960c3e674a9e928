"""Cached global plans (issue 30, item 2): a re-save of one layout reuses the coordinator's plan,
and every change of what the plan depends on (keys, shape, dtype, placement, world size,
planner options) plans afresh, with the plan and metadata a fresh plan gives."""

from __future__ import annotations

import pytest
import torch
from ckptconf.harness.simulated import mesh_values
from ckptconf.reference import PlanValidationError, ReferenceSavePlanner
from ckptconf.reference import compact_plan as cp
from ckptconf.reference import save_planner as sp
from ckptconf.reference.compat import set_up_save_planner
from ckptconf.reference.plan_cache import PlanCache
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.tensor import Replicate, Shard


def _states(world=4, rows=8, dtype=torch.float32, keys=("w", "v"), placement="S0", seed=0):
    """Every rank's state: real DTensor shards (replicas carry checksums), a plain replicated
    tensor and an object, values moved by ``seed``."""
    states: list[dict] = [{} for _ in range(world)]
    placements = (
        [Shard(0)] if placement == "S0" else [Shard(1)] if placement == "S1" else [Replicate()]
    )
    for n, key in enumerate(keys):
        full = torch.arange(rows * 4, dtype=torch.float64).reshape(rows, 4) + 100 * n + seed

        def fill(offsets, sizes, full=full):
            return full[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))]

        values = mesh_values(key, (rows, 4), (world,), placements, dtype=dtype, fill=fill)
        for rank, value in enumerate(values):
            states[rank][key] = value
    for rank in range(world):
        states[rank]["emb"] = torch.full((3,), float(seed))
        states[rank]["step"] = seed
    return states


def _wire(states, planner_class=ReferenceSavePlanner):
    plans = []
    for rank, state in enumerate(states):
        planner = planner_class()
        set_up_save_planner(planner, state, rank == 0)
        plans.append(planner.create_local_plan())
    return cp.decode_save_plans([cp.encode_save_plan(p) for p in plans])


def _coordinator(cache, save_id="s", **options):
    planner = ReferenceSavePlanner(**options)
    planner.plan_cache = cache
    set_up_save_planner(planner, {}, True, StorageMeta(checkpoint_id="/ck", save_id=save_id))
    return planner


def _fresh(states, **options):
    planner = ReferenceSavePlanner(cache_plans=False, **options)
    set_up_save_planner(planner, {}, True, StorageMeta(checkpoint_id="/ck", save_id="fresh"))
    return planner.create_global_plan_compact(_wire(states))


def _same(a, b):
    """Equal kept positions and metadata (entries in order, chunks, paths), storage aside."""
    (kept_a, meta_a), (kept_b, meta_b) = a, b
    assert [None if k is None else k.tolist() for k in kept_a] == [
        None if k is None else k.tolist() for k in kept_b
    ]
    assert list(meta_a.state_dict_metadata) == list(meta_b.state_dict_metadata)
    assert meta_a.state_dict_metadata == meta_b.state_dict_metadata
    assert meta_a.planner_data == meta_b.planner_data


def test_a_resave_of_one_layout_hits_and_skips_the_planning(monkeypatch):
    cache = PlanCache()
    first = _coordinator(cache, "one").create_global_plan_compact(_wire(_states(seed=0)))
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)

    def no_planning(*args, **kwargs):
        raise AssertionError("a cache hit planned")

    monkeypatch.setattr(sp, "compact_global_plan", no_planning)
    second_planner = _coordinator(cache, "two")
    second = second_planner.create_global_plan_compact(_wire(_states(seed=7)))  # new values
    assert (cache.hits, cache.misses) == (1, 1)
    _same(second, first)
    kept, metadata = second
    assert metadata.storage_meta == StorageMeta(checkpoint_id="/ck", save_id="two")  # this save's
    assert first[1].storage_meta.save_id == "one" and second_planner.metadata is metadata
    assert metadata is not first[1]
    monkeypatch.undo()
    _same(second, _fresh(_states(seed=7)))


def _changed(kind):
    return {
        "keys": dict(keys=("w", "u")),
        "shape": dict(rows=12),
        "dtype": dict(dtype=torch.float64),
        "placement": dict(placement="S1"),
        "world": dict(world=3),
    }[kind]


@pytest.mark.parametrize("kind", ["keys", "shape", "dtype", "placement", "world"])
def test_each_change_of_layout_plans_afresh_and_gives_a_fresh_plans_result(kind):
    cache = PlanCache()
    base = _states()
    _coordinator(cache).create_global_plan_compact(_wire(base))
    _coordinator(cache).create_global_plan_compact(_wire(_states(seed=1)))
    assert (cache.hits, cache.misses) == (1, 1)
    changed = _states(seed=2, **_changed(kind))
    got = _coordinator(cache).create_global_plan_compact(_wire(changed))
    assert (cache.hits, cache.misses) == (1, 2), kind
    _same(got, _fresh(changed))
    # and it is not the old layout's plan: the metadata says what changed
    old = _fresh(base)[1].state_dict_metadata
    assert got[1].state_dict_metadata != old or len(got[0]) != len(base), kind
    # the old layout is still cached (two layouts), and comes back right
    again = _coordinator(cache).create_global_plan_compact(_wire(_states(seed=3)))
    assert cache.hits == 2
    _same(again, _fresh(_states(seed=3)))


def test_planner_options_are_part_of_the_key():
    cache = PlanCache()
    states = _states()
    _same(_coordinator(cache).create_global_plan_compact(_wire(states)), _fresh(states))
    unverified = _coordinator(cache, verify_replicas=False)
    _same(unverified.create_global_plan_compact(_wire(states)), _fresh(states))
    assert (cache.hits, cache.misses) == (0, 2)
    differing = _states(seed=1)
    differing[1]["emb"] = torch.full((3,), 9.0)
    # each option's plan: unverified, differing replicas pass; verified, they are named
    kept, _ = _coordinator(cache, verify_replicas=False).create_global_plan_compact(
        _wire(differing)
    )
    assert cache.hits == 1
    _same((kept, _fresh(states)[1]), _fresh(states))
    with pytest.raises(PlanValidationError, match="'emb'.*replicas differ"):
        _coordinator(cache).create_global_plan_compact(_wire(differing))


def test_replicas_are_compared_on_every_save_hit_or_not():
    cache = PlanCache()
    _coordinator(cache).create_global_plan_compact(_wire(_states()))
    differing = _states(seed=1)
    differing[2]["emb"] = torch.full((3,), 9.0)  # one rank's replica differs; same layout
    with pytest.raises(PlanValidationError, match="'emb'.*replicas differ"):
        _coordinator(cache).create_global_plan_compact(_wire(differing))
    differing = _states(seed=1)
    differing[3]["step"] = 5  # an object replica differs
    with pytest.raises(PlanValidationError, match="'step'.*replicas differ"):
        _coordinator(cache).create_global_plan_compact(_wire(differing))
    assert cache.hits == 0  # neither was served from the cache
    _same(_coordinator(cache).create_global_plan_compact(_wire(_states(seed=4))), _fresh(_states()))
    assert cache.hits == 1


def test_what_a_save_does_to_its_metadata_does_not_reach_the_cache():
    cache = PlanCache()
    _, metadata = _coordinator(cache).create_global_plan_compact(_wire(_states()))
    metadata.state_dict_metadata["w"].chunks.clear()  # a writer's finish, a caller
    metadata.state_dict_metadata.pop("v")
    metadata.planner_data.clear()
    metadata.storage_data = {"x": 1}
    _, again = _coordinator(cache).create_global_plan_compact(_wire(_states()))
    again.state_dict_metadata["emb"].properties.dtype = torch.int8
    _, third = _coordinator(cache).create_global_plan_compact(_wire(_states()))
    assert cache.hits == 2
    _same((_fresh(_states())[0], third), _fresh(_states()))
    assert third.storage_data is None


def test_the_cache_keeps_the_most_recent_layouts():
    cache = PlanCache(max_entries=2)
    layouts = [_states(rows=r) for r in (8, 12, 16)]
    for states in layouts:
        _coordinator(cache).create_global_plan_compact(_wire(states))
    assert len(cache) == 2 and cache.misses == 3
    _coordinator(cache).create_global_plan_compact(_wire(layouts[2]))
    _coordinator(cache).create_global_plan_compact(_wire(layouts[1]))
    assert cache.hits == 2
    _coordinator(cache).create_global_plan_compact(_wire(layouts[0]))  # the oldest: dropped
    assert (cache.hits, cache.misses) == (2, 4)
    with pytest.raises(ValueError, match="at least 1"):
        PlanCache(max_entries=0)


def test_by_default_planners_share_the_process_cache_and_can_opt_out():
    from ckptconf.reference.plan_cache import PLAN_CACHE

    assert ReferenceSavePlanner().plan_cache is PLAN_CACHE
    assert ReferenceSavePlanner(cache_plans=False).plan_cache is None
