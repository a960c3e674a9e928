"""Hypothesis strategies for checkpoint conformance cases, public for anyone's property tests.

Every strategy draws plain, picklable data (tuples, strings and the case dataclasses of
:mod:`ckptconf.conformance.kit.cases`) and has no import-time side effects.

Cases run on ranks (:mod:`ckptconf.conformance.kit.strategies`):

- :func:`meshes`: DeviceMesh shapes, 1-D and 2-D, sizes 1-8 (or exactly a world size)
- :func:`placements`: placement names for a mesh and tensor rank (``S<d>``, ``R``, ``SS<d>x<f>``)
- :func:`global_shapes`: shapes including 0-dim, size-0 dims and dims smaller than a mesh
- :func:`dtype_names`: every dtype the suite covers that this torch has
- :func:`layouts`: plain, DTensor or ShardedTensor layouts for a world size
- :func:`save_load_cases`: whole cases, same layout or resharded, with objects
  (:func:`supported_options` gives the options that fit a backend)
- :func:`object_values`: non-tensor values (bytes, numbers, strings, containers)
- :func:`tensor_keys`: state-dict keys, dotted and unusual

Planner-level cases of simulated worlds (:mod:`ckptconf.conformance.suites.plans.strategies`):

- :func:`sim_layouts`: how a simulated world holds a tensor (plain, mesh or submesh, chunk lists)
- :func:`plan_state_cases`: states of simulated worlds
- :func:`plan_reshard_cases`: a simulated state saved on N ranks and its destination on M ranks
- :func:`valid_save_plans`: hand-built global save plans that are valid
- :func:`broken_save_plans`: the same with one named defect (``suites.plans.cases.DEFECTS``)
"""

from .kit.strategies import (
    ALL_DTYPES,
    BASIC_DTYPES,
    available_dtypes,
    dtype_names,
    global_shapes,
    layout_kinds,
    layouts,
    meshes,
    no_prefix_clash,
    object_values,
    placements,
    save_load_cases,
    supported_dtypes,
    supported_options,
    tensor_keys,
)
from .suites.plans.strategies import (
    broken_save_plans,
    plan_reshard_cases,
    plan_state_cases,
    sim_layouts,
    valid_save_plans,
)

__all__ = [
    "ALL_DTYPES",
    "BASIC_DTYPES",
    "available_dtypes",
    "broken_save_plans",
    "dtype_names",
    "global_shapes",
    "layout_kinds",
    "layouts",
    "meshes",
    "no_prefix_clash",
    "object_values",
    "placements",
    "plan_reshard_cases",
    "plan_state_cases",
    "save_load_cases",
    "sim_layouts",
    "supported_dtypes",
    "supported_options",
    "tensor_keys",
    "valid_save_plans",
]
