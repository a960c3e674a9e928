"""Every Python block of the README runs: an example cannot import a name that is not exported.

Each block runs in a fresh interpreter, from the repository root (so ``examples`` imports),
and what it defines is then used as a reader would: a ``backend()`` function must return a
Backend, ``test_*`` functions (a property test of one's own) are called, suite subclasses
must subclass a suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)

_AFTER = """
import inspect
from ckptconf.conformance import Backend
from ckptconf.conformance.suites import SUITES

_defined = dict(globals())
for _name, _value in _defined.items():
    if _name == "backend" and callable(_value):
        assert isinstance(_value(), Backend), _value()
    elif _name.startswith("test_") and inspect.isfunction(_value):
        _value()
    elif inspect.isclass(_value) and _name.startswith("Test"):
        assert issubclass(_value, tuple(SUITES.values())), _value
print("block ran")
"""


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.multiprocess
@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_a_readme_python_block_runs(number):
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[number] + _AFTER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "block ran" in result.stdout, (
        f"README block {number}:\n{BLOCKS[number]}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
