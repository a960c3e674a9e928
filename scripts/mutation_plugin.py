"""pytest plugin loaded by scripts/mutation in each mutant's test run (``-p mutation_plugin``).

It keeps the ``ci`` hypothesis profile (derandomized, 20 examples) and drops only the
shrink phase: a mutant is killed as soon as a test fails, and shrinking the failing
example, which can take far more CPU than the test, would only make mutmut's CPU-time
limit report a kill as a timeout and slow the run down.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, settings


@pytest.hookimpl(trylast=True)  # after tests/conftest.py loaded the session's profile
def pytest_configure(config: pytest.Config) -> None:
    from ckptconf.conformance.kit.profiles import profile_settings
    from ckptconf.conformance.session import of

    profile = of(config).profile
    base = profile_settings(profile)
    settings.register_profile(
        f"{profile}-mutation",
        parent=base,
        phases=[phase for phase in base.phases if phase is not Phase.shrink],
    )
    settings.load_profile(f"{profile}-mutation")
