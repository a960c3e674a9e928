"""State-dict kinds: every dtype, 0-dim and empty tensors, non-contiguous tensors, nested
containers and optimizer-shaped states, unusual keys; and (strict) loads into a state that
does not match the checkpoint, which must fail without touching the destination."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import strategies as st

from ...kit import values
from ...kit.cases import Layout, SaveLoadCase, TensorSpec
from ...kit.layouts import layout_examples
from ...kit.profiles import Pinned, property_test
from ...kit.strategies import (
    ALL_DTYPES,
    BASIC_DTYPES,
    available_dtypes,
    global_shapes,
    layout_kinds,
    layouts,
    no_prefix_clash,
    save_load_cases,
    supported_dtypes,
    supported_options,
)
from ...kit.trial import Trial, describe_outcomes, errors_of, errors_of_calls
from . import ranks
from .cases import (
    KEY_CLASHES,
    MAX_SIDE,
    OBJECT_KINDS,
    Leaf,
    Obj,
    TreeCase,
    empty_shapes,
    optimizer_trees,
    shaped_cases,
    trees,
    unique_flat_keys,
    unusual_keys,
)
from .ranks import FAILING_STATE

__all__ = ["KindsTests"]


def _dtype_params():
    return [
        pytest.param(d, id=d)
        if d in BASIC_DTYPES
        else pytest.param(d, id=d, marks=pytest.mark.ckpt_requires("dtypes"))
        for d in ALL_DTYPES
    ]


def _in_dtype(case: SaveLoadCase, params: dict) -> SaveLoadCase:
    """A pinned case in the dtype the test runs with."""
    tensors = tuple(replace(t, dtype=params["dtype"]) for t in case.tensors)
    return replace(case, tensors=tensors)


_NESTED_PINS = [
    Pinned(
        "an object under an int key",
        requires=("objects",),
        world=1,
        tree={"w": Leaf(TensorSpec("", (3,), "float64", 0)), "extra": {0: Obj(7), "k": Obj("v")}},
    ),
    Pinned(
        "a list of a tensor, an object and a dict, DTensors on 2 ranks",
        requires=("objects", "dtensor"),
        world=2,
        tree={
            "layers": [
                Leaf(TensorSpec("", (4, 2), "float32", 0), Layout("dtensor", (2,), ("S0",))),
                Obj(("cfg", 3)),
                {"b": Leaf(TensorSpec("", (3,), "float64", 1000)), "n": Obj(None)},
            ]
        },
    ),
]
"""Pinned trees: the shapes that break backends (int keys over objects, mixed lists)."""

_FAILING_TIMEOUT = 10.0
"""Seconds for a step in which one rank fails at once: a tiny save or load; a rank still
waiting after that waits for the failed rank."""

_STRICT_PINS = layout_examples(same_layout=True, kinds=("plain", "dtensor"), max_side=MAX_SIDE)
"""The strict loads' cases (``KindsTests._strict_case``): no ShardedTensor, no objects."""


def _check_tree(ckpt, case: TreeCase) -> None:
    """Save the tree's state, load it into a blank tree, compare every value."""
    ckpt.trial(case).save_then_load(case, ckpt.path(), save=ranks.save_tree, load=ranks.load_tree)


@pytest.mark.ckpt_suite("kinds")
@pytest.mark.ckpt_level("core")
class KindsTests:
    """What a state dict may hold round-trips; loads into a mismatching state fail cleanly."""

    # (a) dtypes

    @pytest.mark.parametrize("dtype", _dtype_params())
    @property_test(
        pinned=layout_examples(
            same_layout=True, max_side=MAX_SIDE, per_parameters=_in_dtype, label="case"
        )
    )
    def test_dtype_round_trip(self, ckpt, dtype, data):
        """Tensors of one dtype, any supported layout, on 1 and 2 ranks."""
        if not available_dtypes([dtype]):
            pytest.skip(f"this torch has no {dtype}")
        options = supported_options(ckpt.backend, dtypes=(dtype,), objects=False, max_side=MAX_SIDE)
        case = data.draw(
            save_load_cases(save_worlds=(1, 2), same_layout=True, **options), label="case"
        )
        ckpt.check_save_then_load(case)

    @property_test(pinned=layout_examples(same_layout=True, max_side=MAX_SIDE, objects=True))
    def test_mixed_dtypes(self, ckpt, data):
        """Several dtypes in one checkpoint (1-byte next to 8-byte elements), with objects."""
        options = supported_options(
            ckpt.backend, dtypes=supported_dtypes(ckpt.backend), max_tensors=4, max_side=MAX_SIDE
        )
        case = data.draw(
            save_load_cases(save_worlds=(1, 2), same_layout=True, **options), label="case"
        )
        ckpt.check_save_then_load(case)

    # (b) 0-dim and empty tensors

    @pytest.mark.ckpt_requires("scalar_tensors")
    @property_test(
        pinned=layout_examples(
            same_layout=True, objects=True, keep=lambda c: c.tensors[0].shape == ()
        )
    )
    def test_scalar_tensors(self, ckpt, data):
        """0-dim tensors (plain, or replicated DTensors), every supported dtype."""
        case = data.draw(
            shaped_cases(
                shapes=st.just(()),
                worlds=(1, 2),
                kinds=layout_kinds(ckpt.backend),
                dtypes=supported_dtypes(ckpt.backend),
                objects=ckpt.supports("objects"),
                nested=ckpt.supports("nested_state_dicts"),
            ),
            label="case",
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("empty_tensors")
    @property_test(
        pinned=layout_examples(same_layout=True, min_dims=1, keep=lambda c: 0 in c.tensors[0].shape)
    )
    def test_empty_tensors(self, ckpt, data):
        """Tensors with a size-0 dim, any supported layout."""
        case = data.draw(
            shaped_cases(
                shapes=empty_shapes(),
                worlds=(1, 2),
                kinds=layout_kinds(ckpt.backend),
                dtypes=BASIC_DTYPES,
                objects=False,
                nested=ckpt.supports("nested_state_dicts"),
            ),
            label="case",
        )
        ckpt.check_save_then_load(case)

    # (c) non-contiguous tensors

    @staticmethod
    def _views_case(ckpt, data) -> tuple[SaveLoadCase, tuple[str, ...], str]:
        options = supported_options(
            ckpt.backend,
            kinds=("plain",),
            dtypes=supported_dtypes(ckpt.backend),
            max_tensors=4,
            max_side=MAX_SIDE,
        )
        case = data.draw(
            save_load_cases(save_worlds=(1, 2), same_layout=True, **options), label="case"
        )
        views = tuple(
            data.draw(st.sampled_from(ranks.VIEW_KINDS), label=f"view of {s.key!r}")
            for s in case.tensors
        )
        text = (
            case.describe()
            + "\n  held as: "
            + ", ".join(f"{s.key!r} {v}" for s, v in zip(case.tensors, views))
        )
        return case, views, text

    @property_test(pinned=layout_examples(same_layout=True, kinds=("plain",), max_side=MAX_SIDE))
    def test_noncontiguous_sources(self, ckpt, data):
        """Transposed views, stepped slices, views at a storage offset and views sharing one
        storage save their values (not their storage) and are not modified by the save;
        they load into contiguous tensors."""
        case, views, text = self._views_case(ckpt, data)
        trial, path, world = ckpt.trial(text), ckpt.path(), case.save_world
        changed = trial.run("save", ranks.save_views, case, views, path, world=world)
        found = [m for rank in changed for m in rank]
        found += [
            m for rank in trial.run("load", values.load_case, case, path, world=world) for m in rank
        ]
        trial.check_values(found, "problem(s) saving non-contiguous tensors")

    def test_transposed_view_saves(self, ckpt):
        """A transposed ``float32[2, 3]`` (a non-contiguous view) saves its values: the
        commonest case of ``test_noncontiguous_sources``, checked every run."""
        case = SaveLoadCase((TensorSpec("w", (2, 3), "float32", 1),), (Layout(),), (Layout(),))
        trial, path = ckpt.trial(case.describe() + "\n  held as: 'w' transpose"), ckpt.path()
        changed = trial.run("save", ranks.save_views, case, ("transpose",), path, world=1)
        found = [m for rank in changed for m in rank]
        found += [
            m for rank in trial.run("load", values.load_case, case, path, world=1) for m in rank
        ]
        trial.check_values(found, "problem(s) saving a transposed view")

    @property_test(pinned=layout_examples(same_layout=True, kinds=("plain",), max_side=MAX_SIDE))
    def test_noncontiguous_destinations(self, ckpt, data):
        """Loading in place into the same kinds of views writes the view's elements and
        nothing else of the storage around them."""
        case, views, text = self._views_case(ckpt, data)
        trial, path, world = ckpt.trial(text), ckpt.path(), case.save_world
        trial.run("save", values.save_case, case, path, world=world)
        loaded = trial.run("load", ranks.load_into_views, case, views, path, world=world)
        trial.check_values(
            [m for rank in loaded for m in rank], "problem(s) loading into non-contiguous tensors"
        )

    # (d) containers and keys

    @pytest.mark.ckpt_requires("objects")
    @pytest.mark.parametrize("kind", sorted(OBJECT_KINDS))
    @pytest.mark.parametrize(
        "depth",
        ["top", pytest.param("nested", marks=pytest.mark.ckpt_requires("nested_state_dicts"))],
    )
    def test_object_values(self, ckpt, kind, depth):
        """Each kind of non-tensor value (empty bytes, bytearray, unicode, big ints, inf, None,
        bools, lists and tuples) round-trips with its type, at the top level and nested."""
        leaf = Obj(OBJECT_KINDS[kind])
        weight = Leaf(TensorSpec("", (3,), "float64", 1000))
        tree = {"weight": weight, "value": leaf}
        if depth == "nested":
            tree = {"model": {"weight": weight}, "extra": {"meta": {"value": leaf}}}
        _check_tree(ckpt, TreeCase(tree, 1))

    @pytest.mark.ckpt_requires("nested_state_dicts")
    @pytest.mark.ckpt_level("strict")
    @pytest.mark.parametrize("shape_of_clash", sorted(KEY_CLASHES))
    def test_colliding_keys_are_an_error_or_kept_apart(self, ckpt, shape_of_clash):
        """Two paths that flatten to one key (``{"a.b": x, "a": {"b": y}}``): the save raises on
        every rank, or both values load back; never one value silently under both paths.
        A rejection counts only if the same backend saves and loads the state with the
        clash removed (the control)."""
        case = TreeCase(KEY_CLASHES[shape_of_clash], 2)
        trial, path = ckpt.trial(case), ckpt.path()
        outcomes = trial.run("save", ranks.save_tree_outcome, case, path, world=2)
        raised = [o["raised"] for o in outcomes]
        if all(raised):
            control = TreeCase(_without_clash(case.tree), 2)
            _check_tree(ckpt, control)
            return
        if any(raised):
            raise trial.fail(
                "a save of colliding keys raised on some ranks only",
                "\n".join(f"  rank {r}: {o}" for r, o in enumerate(outcomes)),
                kind="wrong_error",
            )
        loaded = trial.run("load", ranks.load_tree, case, path, world=2)
        trial.check_values(
            [m for rank in loaded for m in rank],
            "value(s) lost: two paths that flatten to one key were saved without an error",
        )

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("replica_check")
    @property_test()
    def test_differing_replicas_are_an_error(self, ckpt, data):
        """A replicated tensor (plain on every rank, or DTensor ``R``) whose value differs on
        one rank: the save raises on every rank naming the key, instead of keeping one copy.
        The same state with equal replicas must save and load (the control)."""
        kinds = ["plain"] + (["dtensor"] if ckpt.supports("dtensor") else [])
        kind = data.draw(st.sampled_from(kinds), label="kind")
        shape = data.draw(
            global_shapes(min_dims=1, max_dims=2, max_side=MAX_SIDE, allow_empty=False),
            label="shape",
        )
        layout = Layout() if kind == "plain" else Layout("dtensor", (2,), ("R",))
        spec = TensorSpec("replicated.weight", shape, "float32", 1000)
        case = SaveLoadCase((spec,), (layout,), (layout,), 2, 2)
        divergent = data.draw(st.integers(0, 1), label="divergent rank")
        trial = ckpt.trial(case.describe() + f"\n  rank {divergent} holds other values")
        outcomes = trial.run(
            "save", ranks.save_divergent_replica, case, ckpt.path(), divergent, world=2
        )
        silent = [r for r, o in enumerate(outcomes) if not o["raised"]]
        unnamed = [r for r, o in enumerate(outcomes) if o["raised"] and spec.key not in o["text"]]
        if silent or unnamed:
            raise trial.fail(
                "a save of replicas that differ must raise on every rank, naming the key",
                "\n".join(
                    f"  rank {r}: "
                    + (f"raised {o['type']}: {o['text'][-300:]}" if o["raised"] else "no error")
                    for r, o in enumerate(outcomes)
                ),
                kind="no_error" if silent else "wrong_error",
                errors=errors_of_calls(outcomes),
                rank=(silent or unnamed)[0],
                key=spec.key,
            )
        trial.save_then_load(case, ckpt.path())

    @pytest.mark.ckpt_requires("nested_state_dicts")
    @property_test(pinned=_NESTED_PINS)
    def test_nested_containers(self, ckpt, data):
        """Dicts in dicts with dotted and unusual keys, lists of tensors, objects at any depth;
        the loaded state keeps its containers and gains no keys."""
        world = data.draw(st.sampled_from([1, 2]), label="world")
        tree = data.draw(
            trees(backend=ckpt.backend, world=world).filter(unique_flat_keys), label="tree"
        )
        _check_tree(ckpt, TreeCase(tree, world))

    @pytest.mark.ckpt_requires("nested_state_dicts")
    @property_test()
    def test_optimizer_state(self, ckpt, data):
        """A model and its optimizer's state_dict(): int-keyed per-parameter state with a
        0-dim step, and param_groups, a list of dicts of objects."""
        world = data.draw(st.sampled_from([1, 2]), label="world")
        tree = data.draw(optimizer_trees(backend=ckpt.backend, world=world), label="tree")
        _check_tree(ckpt, TreeCase(tree, world))

    @pytest.mark.ckpt_requires("nested_state_dicts", "objects", "scalar_tensors")
    def test_int_keys_keep_their_type(self, ckpt):
        """``{"optim": {"state": {0: {"step": t, "n_iter": 7}}}}`` as ``optimizer.state_dict()``
        keys it: the tensor and the object load under the int key 0, and no key "0" appears."""
        step = Leaf(TensorSpec("", (), "float32", 3))
        tree = {"optim": {"state": {0: {"step": step, "n_iter": Obj(7)}, 1: {"n_iter": Obj(9)}}}}
        _check_tree(ckpt, TreeCase(tree, 1))

    @property_test()
    def test_unusual_keys(self, ckpt, data):
        """Flat keys with dots, spaces, slashes, colons, tabs, brackets and non-ASCII."""
        world = data.draw(st.sampled_from([1, 2]), label="world")
        keys = data.draw(
            st.lists(unusual_keys(), min_size=1, max_size=4, unique=True).filter(no_prefix_clash),
            label="keys",
        )
        kinds = layout_kinds(ckpt.backend)
        tree = {}
        for i, key in enumerate(keys):
            shape = data.draw(global_shapes(min_dims=1, max_side=MAX_SIDE, allow_empty=False))
            lay = data.draw(layouts(world_size=world, shape=shape, kinds=kinds, strided=False))
            tree[key] = Leaf(TensorSpec("", shape, "float64", i * 1000), lay)
        _check_tree(ckpt, TreeCase(tree, world))

    @pytest.mark.ckpt_requires("nested_state_dicts")
    @property_test()
    def test_tied_tensors(self, ckpt, data):
        """One tensor object under two keys (tied weights) saves and loads under both."""
        world = data.draw(st.sampled_from([1, 2]), label="world")
        shape = data.draw(
            global_shapes(min_dims=1, max_dims=2, max_side=MAX_SIDE, allow_empty=False)
        )
        lay = data.draw(
            layouts(world_size=world, shape=shape, kinds=layout_kinds(ckpt.backend), strided=False),
            label="layout",
        )
        tied = Leaf(TensorSpec("", shape, "float32", 0), lay)
        other = Leaf(TensorSpec("", shape, "float32", 1000), lay)
        tree = {"embed": {"weight": tied}, "layers": [other], "lm_head": {"weight": tied}}
        _check_tree(ckpt, TreeCase(tree, world, tie=True))

    # (d') what training code hands dcp.save: Stateful values, tensor subclasses

    @pytest.mark.ckpt_requires("objects")
    def test_stateful_values(self, ckpt):
        """A Stateful value (``state_dict()``/``load_state_dict()``, DCP's protocol, as an
        AppState wrapping model and optimizer is) at the top level, on 2 ranks, each with loader
        state under a key of its own: saved as its ``state_dict()``, loaded through its
        ``load_state_dict()``, the same object left in the dict."""
        self._check_stateful(ckpt, nested=False)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("objects", "nested_state_dicts")
    def test_nested_stateful_values(self, ckpt):
        """The same, the Stateful value nested in a dict beside a plain value (DCP handles
        top-level ones only)."""
        self._check_stateful(ckpt, nested=True)

    @staticmethod
    def _check_stateful(ckpt, *, nested: bool) -> None:
        where = "nested in a dict" if nested else "at the top level"
        trial = ckpt.trial(
            f"'app': a Stateful value {where} on 2 ranks: weight float64[4], step 7, "
            "loader_rank<r> {'pos': 100 + r}"
        )
        path = ckpt.path()
        trial.run("save", ranks.stateful_save, path, nested, world=2)
        loaded = trial.run("load", ranks.stateful_load, path, nested, world=2)
        trial.check_values([m for r in loaded for m in r], "problem(s) with the Stateful value")

    @pytest.mark.ckpt_requires("objects")
    @pytest.mark.parametrize("step", ["save", "load"])
    def test_a_stateful_failing_on_one_rank_fails_every_rank(self, ckpt, step):
        """A Stateful value whose ``state_dict()`` raises on rank 1 only (a data loader that
        lost its state), at a save or a load on 2 ranks: every rank raises, within seconds;
        none waits for rank 1 in a collective, none returns as if the step succeeded. The
        control (the same value on both ranks, not failing) saves and loads."""
        trial = ckpt.trial(
            f"{step} of 'app': a Stateful value on 2 ranks whose state_dict() raises on rank 1 "
            f"({FAILING_STATE!r}); control: the same value, not failing"
        )
        path = ckpt.path()
        trial.run("save", ranks.stateful_save, path, False, world=2)
        loaded = trial.run("load", ranks.stateful_load, path, False, world=2)
        trial.check_values([m for r in loaded for m in r], "problem(s) with the Stateful value")
        fn, target = (
            (ranks.failing_stateful_save, ckpt.path())
            if step == "save"
            else (ranks.failing_stateful_load, path)
        )
        outcomes = trial.outcomes(
            f"{step} (state_dict() raising on rank 1)",
            fn,
            target,
            world=2,
            timeout=_FAILING_TIMEOUT,
        )
        errors = errors_of(outcomes)
        returned = [o.rank for o in outcomes if not o.raised]
        if returned:
            raise trial.fail(
                f"a {step} whose Stateful value failed on rank 1 returned on rank(s) {returned}",
                describe_outcomes(outcomes),
                kind="no_error",
                errors=errors,
                rank=returned[0],
                key="app",
            )
        if FAILING_STATE not in outcomes[1].message + outcomes[1].traceback:
            raise trial.fail(
                f"rank 1's {step} raised, but not the error of its state_dict()",
                describe_outcomes(outcomes),
                kind="wrong_error",
                errors=errors,
                rank=1,
                key="app",
            )

    @pytest.mark.parametrize(
        "depth",
        ["top", pytest.param("nested", marks=pytest.mark.ckpt_requires("nested_state_dicts"))],
    )
    def test_tensor_subclasses(self, ckpt, depth):
        """Tensors of a plain ``torch.Tensor`` subclass (float8 and torchao types are such
        subclasses), flat or nested: values load in place, the type kept."""
        trial = ckpt.trial(
            f"'w': float32[2, 3], 'b': float64[3] of a torch.Tensor subclass ({depth})"
        )
        path, nested = ckpt.path(), depth == "nested"
        trial.run("save", ranks.subclass_save, path, nested, world=1)
        loaded = trial.run("load", ranks.subclass_load, path, nested, world=1)
        trial.check_values([m for r in loaded for m in r], "problem(s) with tensor subclasses")

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("objects")
    @pytest.mark.parametrize("change", ["tensor_to_object", "object_to_tensor"])
    def test_a_key_that_changed_kind_raises(self, ckpt, change):
        """A key saved as a tensor and loaded into an object, or the reverse: an error on every
        rank naming the key, the destination untouched."""
        keep = TensorSpec("kept", (3,), "float64", 1)
        tensor = SaveLoadCase(
            (keep, TensorSpec("changed", (2,), "float64", 7)), (Layout(),) * 2, (Layout(),) * 2
        )
        obj = SaveLoadCase((keep,), (Layout(),), (Layout(),), objects=(("changed", 7),))
        saved, dest = (tensor, obj) if change == "tensor_to_object" else (obj, tensor)
        self._check_rejected(
            ckpt, saved, dest, f"a key changed from {change.replace('_', ' ')}", key="changed"
        )

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("dtensor")
    @pytest.mark.parametrize("step", ["save", "load"])
    def test_a_dtensor_off_its_placements_split_is_refused(self, ckpt, step):
        """A DTensor whose local tensors are not the split its placements give (3 rows a rank
        of a 4-row ``Shard(0)`` tensor on 2 ranks, made with ``from_local(..., shape=)``): its
        save, or a load into it, raises on every rank and writes nothing into it, while the
        same key held as its placements give saves and loads (pytorch/pytorch#144109)."""
        what = f"{step} of a DTensor (4,) [S0] on 2 ranks holding 3 rows a rank"
        trial: Trial = ckpt.trial(what)
        results = trial.run(step, ranks.off_split_dtensor, step, ckpt.path(), world=2)
        control = [f"  rank {r['rank']}: {c}" for r in results for c in r["control"]]
        if control:
            raise trial.fail(
                "the same key held as its placements give did not save and load",
                "\n".join(control),
                kind="raised" if " raised " in "\n".join(control) else "wrong_values",
            )
        quiet = [r["rank"] for r in results if not r["raised"]]
        changed = [r["rank"] for r in results if r["changed"]]
        if quiet or changed:
            raise trial.fail(
                f"the {what} must raise on every rank and write nothing into it",
                "\n".join(
                    [f"  rank {r}: the {step} did not raise" for r in quiet]
                    + [f"  rank {r}: the load wrote into the destination" for r in changed]
                ),
                kind="no_error" if quiet else "wrong_values",
                errors=errors_of_calls(results),
            )

    # (e)-(h) strict loads

    @staticmethod
    def _strict_case(ckpt, data) -> SaveLoadCase:
        options = supported_options(ckpt.backend, objects=False, max_side=MAX_SIDE)
        options["kinds"] = tuple(k for k in options["kinds"] if k != "sharded_tensor")
        return data.draw(
            save_load_cases(save_worlds=(1, 2), same_layout=True, **options), label="case"
        )

    @staticmethod
    def _check_rejected(
        ckpt, saved: SaveLoadCase, dest: SaveLoadCase, what: str, *, key: str | None = None
    ) -> None:
        """Save ``saved``; a load into ``dest`` must raise on every rank (naming ``key``, if
        given) and change nothing; a load into ``saved``'s own layout (the control) must work."""
        trial: Trial = ckpt.trial(f"saved:\n{saved.describe()}\ndestination:\n{dest.describe()}")
        path = ckpt.path()
        trial.run("save", values.save_case, saved, path, world=saved.save_world)
        results = trial.run(
            "load", ranks.load_expecting_error, dest, saved, path, world=saved.load_world
        )
        problems = []
        for r in results:
            if not r["raised"]:
                loaded = "; ".join(r["loaded"]) or (
                    "it loaded the saved values, converted where dtypes differ"
                )
                problems.append(f"  rank {r['rank']}: load did not raise ({loaded})")
            if r["changed"]:
                problems.append(
                    f"  rank {r['rank']}: the load modified destination key(s) {r['changed']!r}"
                    + (" before raising" if r["raised"] else "")
                )
        errors = "\n".join(
            f"  rank {r['rank']} raised {r['type']}: {r['text'][-600:]}"
            for r in results
            if r["raised"]
        )
        if problems:
            raise trial.fail(
                f"loading into a state with {what} must raise on every rank and modify nothing",
                "\n".join(problems) + ("\nerrors:\n" + errors if errors else ""),
                kind="no_error" if any(not r["raised"] for r in results) else "wrong_values",
                errors=errors_of_calls(results),
            )
        unnamed = [r["rank"] for r in results if key is not None and key not in r["text"]]
        if unnamed:
            raise trial.fail(
                f"loading into a state with {what} raised without naming the key {key!r}",
                errors,
                kind="wrong_error",
                errors=errors_of_calls(results),
                rank=unnamed[0],
                key=key,
            )
        control = [f"  rank {r['rank']}: {c}" for r in results for c in r["control"]]
        if control:
            raise trial.fail(
                "after the rejected load, loading the checkpoint into a matching state failed",
                "\n".join(control),
                kind="wrong_values",
            )

    @pytest.mark.ckpt_level("strict")
    @property_test(pinned=_STRICT_PINS)
    def test_missing_key_in_checkpoint_raises(self, ckpt, data):
        """The destination has a key the checkpoint lacks: an error, destination untouched."""
        case = self._strict_case(ckpt, data)
        dest = _with_extra(case, TensorSpec("zz_only_in_destination", (3,), "float64", salt=777))
        self._check_rejected(ckpt, case, dest, "a key missing from the checkpoint")

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("strict_keys")
    @property_test(pinned=_STRICT_PINS)
    def test_unexpected_key_in_checkpoint_raises(self, ckpt, data):
        """The checkpoint has a key the destination lacks: an error, destination untouched."""
        case = self._strict_case(ckpt, data)
        saved = _with_extra(case, TensorSpec("zz_only_in_checkpoint", (3,), "float64", salt=777))
        self._check_rejected(ckpt, saved, case, "a key the checkpoint has and it lacks")

    @pytest.mark.ckpt_level("strict")
    @property_test(pinned=_STRICT_PINS)
    def test_shape_mismatch_raises(self, ckpt, data):
        """A destination tensor of another global shape: the same number of dims, or one more
        or one fewer (a destination of other dims is held whole on every rank)."""
        case = self._strict_case(ckpt, data)
        fewest = 0 if ckpt.supports("scalar_tensors") else 1
        saved, dest = _with_one_changed(
            data,
            case,
            lambda spec: data.draw(
                global_shapes(
                    min_dims=max(fewest, len(spec.shape) - 1),
                    max_dims=len(spec.shape) + 1,
                    max_side=MAX_SIDE,
                    allow_empty=ckpt.supports("empty_tensors"),
                ).filter(lambda s: s != spec.shape),
                label="destination shape",
            ),
            "shape",
        )
        self._check_rejected(
            ckpt, saved, _plain_where_dims_changed(saved, dest), "a shape mismatch"
        )

    @pytest.mark.ckpt_level("strict")
    @property_test(pinned=_STRICT_PINS)
    def test_dtype_mismatch_raises(self, ckpt, data):
        """A destination tensor of another dtype (no silent cast)."""
        case = self._strict_case(ckpt, data)
        saved, dest = _with_one_changed(
            data,
            case,
            lambda spec: data.draw(
                st.sampled_from([d for d in BASIC_DTYPES if d != spec.dtype]),
                label="destination dtype",
            ),
            "dtype",
        )
        self._check_rejected(ckpt, saved, dest, "a dtype mismatch")


def _with_extra(case: SaveLoadCase, extra: TensorSpec) -> SaveLoadCase:
    """``case`` with one more plain tensor."""
    return replace(
        case,
        tensors=case.tensors + (extra,),
        save_layouts=case.save_layouts + (Layout(),),
        load_layouts=case.load_layouts + (Layout(),),
    )


def _with_one_changed(data, case: SaveLoadCase, new_value, field: str):
    """``(case, destination)``: the destination has one tensor's ``field`` changed."""
    index = data.draw(st.integers(0, len(case.tensors) - 1), label="changed tensor")
    spec = case.tensors[index]
    changed = replace(spec, **{field: new_value(spec)})
    tensors = case.tensors[:index] + (changed,) + case.tensors[index + 1 :]
    return case, replace(case, tensors=tensors)


def _plain_where_dims_changed(saved: SaveLoadCase, dest: SaveLoadCase) -> SaveLoadCase:
    """``dest`` with each tensor whose number of dims changed held plain on every rank (its
    layout was drawn for the saved shape)."""
    layouts = tuple(
        layout if len(a.shape) == len(b.shape) else Layout()
        for a, b, layout in zip(saved.tensors, dest.tensors, dest.load_layouts)
    )
    return replace(dest, load_layouts=layouts)


def _without_clash(tree: dict) -> dict:
    """The clash trees with the colliding path renamed, so every path flattens to its own key."""
    return {(f"{k}_apart" if isinstance(v, dict | list) else k): v for k, v in tree.items()}
