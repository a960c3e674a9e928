"""The session: what one run of the suites was asked for, read once.

Built by the pytest plugin at configure time from the ``--ckpt-*`` options and the
environment, kept in ``config.stash`` (:func:`of`), and handed down to every test through
the ``ckpt`` fixture (``ckpt.session``). Nothing in the suites reads pytest's options or
module globals for these values; outside a pytest session (a script driving a
:class:`~.kit.trial.Checker` itself) :meth:`Session.from_environment` gives the same
defaults a pytest run would.

Importing this module imports neither torch nor hypothesis (the plugin imports it in every
pytest session, and stays inert until asked).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = ["INFO", "PROFILES", "PROFILE_NAMES", "Session", "of", "profile_from_environment"]

PROFILES: dict[str, dict[str, Any]] = {
    "ci": dict(max_examples=20, derandomize=True),
    "dev": dict(max_examples=40),
    "thorough": dict(max_examples=400),
}
"""The ckptconf profiles by name: hypothesis settings (with :data:`.kit.profiles` common ones)."""

PROFILE_NAMES = tuple(PROFILES)

INFO = "ckptconf"
"""The ``user_properties`` entry carrying a conformance test's data to the report."""


def profile_from_environment() -> str:
    """``CKPTCONF_PROFILE``, else ``ci`` when ``CI`` is set, else ``dev``.

    Raises ``ValueError`` naming the variable when ``CKPTCONF_PROFILE`` is not a profile."""
    chosen = os.environ.get("CKPTCONF_PROFILE")
    if chosen is not None and chosen not in PROFILE_NAMES:
        raise ValueError(
            f"CKPTCONF_PROFILE={chosen!r} is not a ckptconf profile; expected one of "
            f"{list(PROFILE_NAMES)}"
        )
    return chosen or ("ci" if os.environ.get("CI") else "dev")


@dataclass
class Session:
    """One run's choices. Fields are the options of the same name (``--ckpt-max-examples`` is
    ``max_examples``); ``seed`` is the session's seed for profiles that are not derandomized
    (``--hypothesis-seed``, else drawn once, and shared with xdist workers), ``None`` with an
    example ``database`` (hypothesis replays a database only in unseeded tests)."""

    profile: str = "dev"
    seed: int | None = None
    shrink: bool = True
    max_examples: int | None = None
    database: str | None = None
    device: str = "cpu"
    world_size: int | None = None
    timeout: float | None = None
    budget: str | None = None
    folder: str | None = None
    launched: Any = None
    """The world a launcher (torchrun) started, taken by rank 0 at session start; ``None`` in
    pool mode."""
    shared_folder: str | None = None
    """Under a launcher, the checkpoint folder every rank was checked to see."""
    started: float = field(default_factory=time.time)
    """When ckptconf was switched on in the session (``time.time()``): a budget counts from it."""

    def __post_init__(self) -> None:
        if self.profile not in PROFILE_NAMES:
            raise ValueError(
                f"unknown ckptconf profile {self.profile!r}; expected one of {list(PROFILE_NAMES)}"
            )
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"--ckpt-max-examples {self.max_examples}: must be at least 1")
        if self.database is not None and self.derandomized:
            raise ValueError(
                f"--ckpt-database {self.database}: the {self.profile} profile is derandomized "
                "and keeps no example database; use --ckpt-profile dev or thorough"
            )

    @property
    def derandomized(self) -> bool:
        """Whether the profile draws the same examples every run (``ci``)."""
        return bool(PROFILES[self.profile].get("derandomize"))

    @property
    def run_seed(self) -> int | None:
        """The seed the suite tests use: ``None`` under a derandomized profile or a database."""
        return None if self.derandomized or self.database is not None else self.seed

    @property
    def largest_world(self) -> int | None:
        """The largest world the suites also draw cases on: ``--ckpt-world-size``, else the
        launched world's size, else ``None`` (the suites' own sizes only)."""
        if self.world_size is not None:
            return self.world_size
        return self.launched.size if self.launched is not None else None

    @classmethod
    def from_environment(cls, **fields: Any) -> Session:
        """The session of a run outside pytest: the profile from the environment
        (:func:`profile_from_environment`), a fresh seed, ``fields`` on top."""
        fields.setdefault("profile", profile_from_environment())
        if "seed" not in fields and fields.get("database") is None:
            fields["seed"] = random.randrange(2**32)
        return cls(**fields)


_KEY = pytest.StashKey[Session]()


def of(config: Any) -> Session:
    """The session of pytest ``config``; built from its options on first use.

    Raises ``pytest.UsageError`` naming the option when an option's value is not usable."""
    if _KEY not in config.stash:
        config.stash[_KEY] = _from_config(config)
    return config.stash[_KEY]


WORKER_SEED = "ckptconf_seed"
"""The key of xdist's ``workerinput`` that carries the controller's seed to every worker."""


def _from_config(config: Any) -> Session:
    def option(name: str) -> Any:
        return config.getoption(name, None)

    try:
        profile = option("ckpt_profile") or profile_from_environment()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    database = option("ckpt_database")
    seed: int | None = None
    if database is None:  # a seeded hypothesis test uses no example database
        given = option("hypothesis_seed")
        worker = getattr(config, "workerinput", None)
        if given is not None:
            seed = int(given)
        elif worker is not None and WORKER_SEED in worker:
            seed = worker[WORKER_SEED]
        else:
            seed = random.randrange(2**32)
    try:
        return Session(
            profile=profile,
            seed=seed,
            shrink=not option("ckpt_no_shrink"),
            max_examples=option("ckpt_max_examples"),
            database=database,
            device=option("ckpt_device") or "cpu",
            world_size=option("ckpt_world_size"),
            timeout=option("ckpt_timeout"),
            budget=option("ckpt_budget"),
            folder=option("ckpt_dir"),
        )
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
