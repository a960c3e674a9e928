"""The steps of a lifecycle run: plain data drawn in the controller, printed as numbered lines.

A run is a list of steps on two checkpoint paths (*slots* 0 and 1, as a job rotating
between two paths, or saving again to one). Their ``repr`` evaluates back to the step
(:func:`parse_steps`), and so does their short form (:func:`printed`): a printed sequence
is a reproduction.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass

from ...kit.cases import TensorSpec
from ...kit.jobs import Holding, PerRankCase, PerRankObject

__all__ = [
    "FailedSave",
    "KilledSave",
    "Load",
    "RacingLoad",
    "Save",
    "Step",
    "Wait",
    "describe_job",
    "numbered",
    "parse_steps",
    "printed",
]


def describe_job(case: PerRankCase) -> str:
    """One line: the family, the world, each key's dtype and shape, who holds it and how."""
    keys = []
    for spec, holding in zip(case.tensors, case.saved):
        how = f" as DTensor [{holding.placement}]" if holding.kind == "dtensor" else ""
        who = _who(holding.ranks, case.save_world)
        keys.append(f"{spec.key} {spec.dtype}{list(spec.shape)}@{who}{how}")
    keys += [f"{o.key}@{_who(o.saved_by, case.save_world)}" for o in case.objects]
    return f"{case.family} on {case.save_world} rank(s): {', '.join(keys) or 'no keys'}"


def _who(ranks: tuple[int, ...], world: int) -> str:
    if len(ranks) == world:
        return "all"
    return "r" + ",".join(map(str, ranks))


@dataclass(frozen=True)
class Save:
    """Save ``case`` to slot ``slot``; ``background``: with async_save, completed by a later
    :class:`Wait` (other steps run meanwhile)."""

    slot: int
    case: PerRankCase
    background: bool = False

    def describe(self) -> str:
        how = "async_save (left running)" if self.background else "save"
        return f"{how} to slot {self.slot}: {describe_job(self.case)}"


@dataclass(frozen=True)
class Wait:
    """Wait for the async save to slot ``slot``: the checkpoint is committed once it returns."""

    slot: int

    def describe(self) -> str:
        return f"wait for the async save to slot {self.slot}"


@dataclass(frozen=True)
class FailedSave:
    """Save ``case`` to slot ``slot`` through a writer failing at ``hook`` on rank ``rank``."""

    slot: int
    case: PerRankCase
    hook: str
    rank: int

    def describe(self) -> str:
        return (
            f"save to slot {self.slot}, failing at {self.hook} on rank {self.rank}: "
            f"{describe_job(self.case)}"
        )


@dataclass(frozen=True)
class KilledSave:
    """Save ``case`` to slot ``slot`` on fresh ranks, SIGKILLing rank ``rank`` at ``point``."""

    slot: int
    case: PerRankCase
    point: str
    rank: int

    def describe(self) -> str:
        return (
            f"save to slot {self.slot}, rank {self.rank} killed at {self.point}: "
            f"{describe_job(self.case)}"
        )


@dataclass(frozen=True)
class Load:
    """Load slot ``slot``; ``other_world``: on the world and key split the checkpoint's case
    draws for loading (a world-size change), else as it was saved."""

    slot: int
    other_world: bool = False

    def describe(self) -> str:
        return f"load slot {self.slot}" + (" on another world" if self.other_world else "")


@dataclass(frozen=True)
class RacingLoad:
    """Load slot ``slot``, paused after reading the metadata (before any data), while a save of
    ``case`` to the same slot commits; then let the load go on."""

    slot: int
    case: PerRankCase

    def describe(self) -> str:
        return (
            f"load slot {self.slot}, paused after reading its metadata while a save to slot "
            f"{self.slot} commits: {describe_job(self.case)}"
        )


Step = Save | Wait | FailedSave | KilledSave | Load | RacingLoad


def printed(steps: list[Step]) -> str:
    """``steps`` as a short list literal :func:`parse_steps` reads back (fields in order, trailing
    defaults left out)."""
    return "[" + ", ".join(_short(s) for s in steps) + "]"


def _short(value) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        args = [getattr(value, f.name) for f in fields]
        while (
            fields
            and fields[-1].default is not dataclasses.MISSING
            and args[-1] == fields[-1].default
        ):
            fields, args = fields[:-1], args[:-1]
        return f"{type(value).__name__}({', '.join(_short(a) for a in args)})"
    if isinstance(value, tuple):
        inner = ", ".join(_short(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return repr(value)


def numbered(steps: list[Step], *, failing: int | None = None) -> str:
    """The steps, one per line, numbered from 1; the step at index ``failing`` marked."""
    return "\n".join(
        f"{'->' if i == failing else '  '} {i + 1}. {s.describe()}" for i, s in enumerate(steps)
    )


_NAMES = {
    cls.__name__: cls
    for cls in (
        Save,
        Wait,
        FailedSave,
        KilledSave,
        Load,
        RacingLoad,
        PerRankCase,
        PerRankObject,
        Holding,
        TensorSpec,
    )
}


def parse_steps(text: str) -> list[Step]:
    """The steps of ``repr(steps)``: a list of calls of the step and case classes above, with
    constants, tuples, lists and keyword arguments (nothing else is evaluated).

    Raises ``ValueError`` naming what is not such a list.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
        steps = _value(tree.body)
    except (SyntaxError, ValueError, TypeError) as exc:
        raise ValueError(f"not a printed list of lifecycle steps: {exc}") from None
    if not isinstance(steps, list) or not all(isinstance(s, Step) for s in steps):
        raise ValueError("not a printed list of lifecycle steps: expected [Save(...), ...]")
    return steps


def _value(node: ast.expr):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_value(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    if isinstance(node, ast.Name) and node.id in ("nan", "inf"):
        return float(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NAMES:
        args = [_value(a) for a in node.args]
        kwargs = {k.arg: _value(k.value) for k in node.keywords if k.arg is not None}
        return _NAMES[node.func.id](*args, **kwargs)
    raise ValueError(f"unexpected {ast.unparse(node)[:80]!r} at column {node.col_offset}")
