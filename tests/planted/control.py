"""The control of the kill rate: the planted-bug scaffold with no bug planted."""

from __future__ import annotations

from ckptconf.conformance import Backend

from ._common import planted_backend

__all__ = ["control"]


def control() -> Backend:
    """No bug: the reference assembled from the same parts as every planted bug."""
    return planted_backend(
        "control", "no bug: the planted-bug scaffold as every bug starts from it"
    )
