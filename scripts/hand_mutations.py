"""Break the reference on purpose, one planted bug at a time, and check a test catches each.

Run: .venv/bin/python scripts/hand_mutations.py [index ...]; prints KILLED or SURVIVED per
mutation. Each mutation is applied to an isolated copy in a temporary folder (the package
laid out by import name, first on PYTHONPATH, also for spawned ranks), never to this
checkout, which others may be importing from. A clean run of the chosen test files must
pass first, so that a failure means the mutation was caught.

Complements scripts/mutation (mutmut over the geometry and planning modules): these 18
hand-written bugs are in the modules mutmut is not run on here (storage checksums and
commit, metadata version, coordination, flatten, safe decoding, staging) and each needs
one test file, so the set runs in minutes.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
PACKAGE_DIRS = {
    "ckptconf": "_ckptconf",
    "ckptconf/reference": "reference",
    "ckptconf/harness": "harness",
    "ckptconf/conformance": "conformance",
}

M = [
    (
        "reference/resharding.py",
        "candidates = self.chunks[bisect_left(self.starts, lo) : bisect_left(self.starts, hi)]",
        "candidates = self.chunks",
        "tests/reference/test_validation_and_dedup.py",
    ),
    (
        "reference/validation.py",
        "    if (counts > 1).any():",
        "    if False:",
        "tests/reference/test_validation_and_dedup.py",
    ),
    (
        "reference/validation.py",
        "if require_cover and (counts == 0).any():",
        "if False:",
        "tests/reference/test_validation_and_dedup.py",
    ),
    (
        "reference/dedup.py",
        "if owner[key] == rank and key not in seen:",
        "if key not in seen:",
        "tests/reference/test_validation_and_dedup.py",
    ),
    (
        "reference/dedup.py",
        "chosen = min(sorted(set(holders[key])), key=lambda r: (load[r], r))",
        "chosen = max(holders[key])",
        "tests/reference/test_validation_and_dedup.py",
    ),
    (
        "reference/load_planner.py",
        "            if result.uncovered:",
        "            if False:",
        "tests/reference/test_load_contract.py",
    ),
    (
        "reference/load_planner.py",
        "if saved_dtype != dest_dtype and not self.cast_dtypes:",
        "if False:",
        "tests/reference/test_load_contract.py",
    ),
    (
        "reference/load_planner.py",
        "if unexpected and not self.allow_unexpected_keys:",
        "if False:",
        "tests/reference/test_load_contract.py",
    ),
    (
        "reference/storage.py",
        "            if checksum(region.algorithm, buffer[lo:hi]) != region.checksums[block]:",
        "            if False:",
        "tests/reference/test_storage.py",
    ),
    (
        "reference/resharding.py",
        "dest_offsets=torch.Size(o - d for o, d in zip(both.offsets, dest.offsets)),",
        "dest_offsets=torch.Size(max(0, o - d - 1) for o, d in zip(both.offsets, dest.offsets)),",
        "tests/reference/test_storage.py",
    ),
    (
        "reference/metadata_format.py",
        "    if version != FORMAT_VERSION:",
        "    if False:",
        "tests/reference/test_metadata_format.py",
    ),
    (
        "reference/coordination.py",
        "rank: value for rank, (status, value) in enumerate(gathered) if status == _FAILED",
        "rank: value for rank, (status, value) in enumerate(gathered) if status == _FAILED and rank == 0",
        "tests/reference/test_multiprocess.py",
    ),
    (
        "reference/storage.py",
        "        self.store.commit_metadata(dump_metadata(committed))\n",
        "        pass\n",
        "tests/reference/test_storage.py",
    ),
    (
        "reference/storage.py",
        "                if generation not in current:",
        "                if False:",
        "tests/reference/test_storage.py",
    ),
    (
        "reference/flatten.py",
        "        if key in flat:",
        "        if False:",
        "tests/reference/test_flatten_and_serialization.py",
    ),
    (
        "reference/serialization.py",
        "weights_only=True, map_location",
        "weights_only=False, map_location",
        "tests/reference/test_flatten_and_serialization.py",
    ),
    (
        "reference/staging.py",
        '            buffer.copy_(source, non_blocking=source.device.type == "cuda")',
        "            buffer = source",
        "tests/reference/test_load_contract.py",
    ),
    (
        "reference/save_planner.py",
        "        if self.verify_replicas:\n            problems += _replica_mismatches(all_plans)",
        "        pass",
        "tests/reference/test_validation_and_dedup.py",
    ),
]
only = sys.argv[1:]
chosen = [(i, m) for i, m in enumerate(M) if not only or str(i) in only]
ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
work = pathlib.Path(tempfile.mkdtemp(prefix="ckptconf-hand-mutations-"))
try:
    for target, source in PACKAGE_DIRS.items():
        if target == "ckptconf":
            (work / target).mkdir(parents=True)
            for f in (ROOT / source).glob("*.py"):
                shutil.copy2(f, work / target / f.name)
        else:
            shutil.copytree(ROOT / source, work / target, ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    env = dict(os.environ, PYTHONPATH=str(work), CKPTCONF_PROFILE="ci", PYTHONDONTWRITEBYTECODE="1")
    probe = subprocess.run(
        [str(PYTHON), "-c", "import ckptconf.reference as r; print(r.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    if not probe.stdout.startswith(str(work)):
        sys.exit(
            f"isolation check failed: ckptconf.reference imports from {probe.stdout or probe.stderr}"
        )

    def run(tests):
        return subprocess.run(
            [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    clean = run(sorted({m[3] for _, m in chosen}))
    if clean.returncode != 0:
        sys.exit(
            f"the unmutated copy fails its tests; no mutation result would mean anything:\n{clean.stdout[-3000:]}"
        )
    for i, (f, old, new, tests) in chosen:
        path = work / "ckptconf" / f
        src = path.read_text()
        assert old in src, (f, old)
        path.write_text(src.replace(old, new, 1))
        try:
            r = run([tests])
        finally:
            path.write_text(src)
        print(i, "KILLED" if r.returncode != 0 else "SURVIVED", f, new[:60].strip(), flush=True)
finally:
    shutil.rmtree(work, ignore_errors=True)
