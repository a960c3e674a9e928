"""The catalogue of deliberately broken backends: every one the project's tests use is here.

Planted bugs: the reference (or its parts) with one realistic mistake each. ``PLANTED``
lists them for the kill-rate runner (:mod:`tests.planted.killrate`): the conformance suite
must fail at least one test against each. ``CONTROL`` is the same scaffold with no bug: a
killing test that fails on it too does not count as a kill. Modules by area: geometry,
dedup, storage, faults, checkpointer, asyncsave, loading, kinds, validation, per_rank,
lifecycle, crash.

On DCP's default planners (``dcp_planners``, ``dcp_mesh``): one broken planner or
checkpointer each, for the meta-tests of the plans and mesh_change suites
(``tests/conformance``). They are not in ``PLANTED``: the kill rate's control is the
reference scaffold, which cannot vouch for a kill of a backend built on DCP's planners.

Every backend is a module-level function returning a :class:`ckptconf.conformance.Backend`
named after it, so ranks rebuild it from its ``module:attr`` spec; its docstring is the
one-line class of mistake it models.
"""

from __future__ import annotations

from . import (
    asyncsave,
    checkpointer,
    control,
    crash,
    dedup,
    faults,
    geometry,
    kinds,
    lifecycle,
    loading,
    per_rank,
    storage,
    validation,
)
from .killrate import PlantedBug

__all__ = ["PLANTED", "CONTROL", "by_name"]


def _bug(
    module, name: str, suites: tuple[str, ...], *, fast: bool = False, tests: str | None = None
) -> PlantedBug:
    factory = getattr(module, name)
    return PlantedBug(
        name=name,
        description=factory.__doc__.strip().splitlines()[0],
        spec=f"{module.__name__}:{name}",
        target_suites=suites,
        fast=fast,
        tests=tests,
    )


# no target suite: the control only runs the tests that killed a bug
CONTROL = _bug(control, "control", ())


PLANTED: list[PlantedBug] = [
    # geometry
    _bug(geometry, "wrong_offset_on_one_dim", ("roundtrip", "resharding")),
    _bug(geometry, "uneven_split_off_by_one", ("resharding", "roundtrip")),
    _bug(geometry, "dims_swapped_on_2d_mesh", ("resharding",)),
    _bug(geometry, "strided_shard_as_shard", ("roundtrip", "resharding")),
    _bug(geometry, "sharded_tensor_offsets_ignored", ("roundtrip", "resharding")),
    _bug(geometry, "first_overlapping_chunk_only", ("resharding", "plans")),
    _bug(geometry, "saved_rank_mapping_on_world_change", ("resharding",)),
    _bug(geometry, "wrong_global_size_in_metadata", ("roundtrip", "plans")),
    _bug(geometry, "submesh_rank_as_coordinate_zero", ("mesh_change",)),
    _bug(geometry, "checkpointable_subclass_ignored", ("mesh_change", "plans")),
    # dedup and determinism
    _bug(
        dedup,
        "dedup_key_without_offsets",
        ("roundtrip", "plans"),
        fast=True,
        tests="test_round_trip_dtensor_on_two_ranks",
    ),
    _bug(dedup, "dedup_owner_not_a_holder", ("plans", "resharding")),
    _bug(dedup, "dedup_keeps_stale_replica", ("plans",)),
    _bug(dedup, "no_dedup_duplicate_chunks", ("roundtrip", "plans")),
    _bug(dedup, "nondeterministic_plan_order", ("plans",)),
    # storage and metadata
    _bug(storage, "ranged_read_off_by_bytes", ("resharding",)),
    _bug(storage, "last_chunk_skipped", ("roundtrip",)),
    _bug(storage, "empty_shards_dropped", ("roundtrip", "kinds")),
    _bug(
        storage,
        "truncated_final_write",
        ("roundtrip", "storage"),
        fast=True,
        tests="test_round_trip and not strided and not dtensor",
    ),
    _bug(
        storage,
        "reader_ignores_storage_offsets",
        ("resharding",),
        fast=True,
        tests="test_placement_change",
    ),
    _bug(storage, "checksum_not_verified", ("storage",)),
    _bug(storage, "read_errors_become_zeros", ("storage",)),
    _bug(storage, "stale_metadata_cache", ("storage",)),
    _bug(storage, "resave_leaves_old_keys", ("storage",)),
    _bug(storage, "metadata_missing_bytes_entries", ("roundtrip", "storage")),
    _bug(storage, "overwrites_in_place", ("storage",)),
    # state that differs between ranks
    _bug(per_rank, "unexpected_keys_checked_per_rank", ("per_rank",)),
    _bug(per_rank, "int_keys_stringified_on_load", ("kinds",)),
    _bug(per_rank, "meta_destinations_skipped", ("per_rank",)),
    _bug(per_rank, "coordinator_group_rank_as_global", ("per_rank",)),
    _bug(
        per_rank,
        "replicas_written_by_coordinator_only",
        ("resharding",),
        tests="test_placement_change",
    ),
    _bug(storage, "prefix_listing", ("storage",)),
    _bug(storage, "zero_fill_short_read", ("storage",)),
    # failures
    _bug(faults, "exception_swallowed_on_non_coordinator", ("faults",)),
    _bug(faults, "failed_write_future_ignored", ("faults",)),
    _bug(
        faults,
        "error_raised_only_on_coordinator",
        ("faults",),
        fast=True,
        tests="test_writer_fault_fails_every_rank",
    ),
    _bug(faults, "hang_on_non_coordinator_after_failure", ("faults",)),
    _bug(
        faults,
        "metadata_before_data_no_atomic_rename",
        ("faults",),
        fast=True,
        tests="test_failed_save_keeps_the_previous_checkpoint",
    ),
    _bug(faults, "data_overwritten_in_place", ("faults",)),
    # checkpointer
    _bug(checkpointer, "checkpointer_passes_removed_argument", ("mesh_change",)),
    # async save
    _bug(asyncsave, "async_reads_live_tensors", ("async_save",), fast=True),
    _bug(asyncsave, "async_future_resolves_before_write", ("async_save",)),
    _bug(asyncsave, "async_objects_not_copied", ("async_save",)),
    # loading
    _bug(
        loading,
        "missing_key_ignored",
        ("kinds",),
        fast=True,
        tests="test_missing_key_in_checkpoint_raises",
    ),
    _bug(loading, "unexpected_key_ignored", ("kinds",)),
    _bug(loading, "silent_dtype_cast_on_load", ("kinds",)),
    _bug(loading, "shape_mismatch_not_checked", ("kinds",)),
    _bug(loading, "contract_checked_after_load", ("kinds",)),
    _bug(loading, "objects_decoded_as_none", ("roundtrip", "kinds")),
    _bug(loading, "objects_not_loaded", ("roundtrip", "kinds")),
    _bug(loading, "nested_objects_set_by_flat_key", ("roundtrip", "kinds")),
    _bug(loading, "bytes_values_lost", ("roundtrip", "kinds")),
    _bug(loading, "dotted_keys_split_on_load", ("kinds",)),
    _bug(loading, "list_containers_loaded_as_dicts", ("kinds",)),
    _bug(
        loading,
        "noncontiguous_destination_copy",
        ("kinds",),
        fast=True,
        tests="test_noncontiguous_destinations",
    ),
    # state-dict kinds
    _bug(
        kinds, "zero_dim_saved_as_one_element", ("kinds",), fast=True, tests="test_scalar_tensors"
    ),
    _bug(kinds, "size0_tensors_dropped", ("kinds",)),
    _bug(kinds, "bfloat16_saved_as_float16", ("kinds",)),
    _bug(kinds, "bool_saved_as_uint8", ("kinds",)),
    _bug(kinds, "noncontiguous_view_storage_written", ("kinds",)),
    _bug(kinds, "tied_weights_saved_once", ("kinds",)),
    _bug(kinds, "key_collision_silent", ("kinds",)),
    # validation
    _bug(
        validation,
        "validator_misses_gaps",
        ("plans",),
        fast=True,
        tests="test_rejects_broken_plan and gap",
    ),
    _bug(validation, "validator_misses_overlaps", ("plans",)),
    _bug(validation, "validator_misses_out_of_bounds", ("plans",)),
    _bug(validation, "validator_ignores_dtype_disagreement", ("plans",)),
    # defects of two or more operations, seen in the lifecycle
    _bug(lifecycle, "reads_newest_generation", ("lifecycle",)),
    _bug(lifecycle, "lock_left_by_failed_save", ("lifecycle",)),
    _bug(lifecycle, "save_plan_cached", ("lifecycle",)),
    _bug(lifecycle, "plan_cache_ignores_dtype", ("lifecycle",)),
    _bug(lifecycle, "async_staging_buffers_reused", ("lifecycle",)),
    _bug(lifecycle, "racing_load_refused_on_one_rank", ("lifecycle",)),
    # durability order, seen only in crash states
    _bug(crash, "metadata_renamed_before_data_synced", ("crash_states",)),
    _bug(crash, "metadata_written_in_place", ("crash_states",)),
    _bug(crash, "metadata_synced_after_rename", ("crash_states",)),
]
"""Every planted bug, with the suites meant to catch it; ``fast`` ones form the CI subset."""


def by_name(name: str) -> PlantedBug:
    """The planted bug called ``name``."""
    for bug in PLANTED:
        if bug.name == name:
            return bug
    raise KeyError(f"no planted bug {name!r}; known: {sorted(b.name for b in PLANTED)}")
