"""Test configuration. Hypothesis profiles (ci, dev, thorough) come from the ckptconf plugin:
``--ckpt-profile`` or ``CKPTCONF_PROFILE``; ``ci`` when ``CI`` is set, else ``dev``."""

from __future__ import annotations

pytest_plugins = ["ckptconf.harness.fixtures"]
