"""The plans suite: the backend's planners on simulated worlds of up to 2,048 ranks."""

from .suite import PlansTests

PlanValidationTests = PlansTests
"""The suite's earlier name, kept for existing subclasses."""

__all__ = ["PlanValidationTests", "PlansTests"]
