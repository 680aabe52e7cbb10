"""The fuzz targets in CI: every committed seed replayed in-process, then a bounded coverage-guided run of
each target under atheris (libFuzzer) in a process of its own. A longer run: tests/fuzz/run.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import MODULES, load, seeds

pytestmark = pytest.mark.fuzz

RUNS = 2000
"""Inputs per target in CI: all targets take about 20 s on 2 idle cores."""
TIMEOUT = 10
"""Seconds one input may take before libFuzzer calls it a hang (generous: CI machines are shared)."""
SEED = int(os.environ.get("KUBESPIFFE_FUZZ_SEED", "1"))
"""A fixed seed makes a CI run repeatable; set KUBESPIFFE_FUZZ_SEED=0 for a new one each run."""
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("name", MODULES)
def test_seeds_replay(name: str) -> None:
    """Each committed seed (and each input that once crashed a target) passes, with a plain traceback
    here when one does not."""
    target = load(name)
    files = seeds(name)
    assert files, f"tests/fuzz/corpus/{name} has no seeds"
    for path in files:
        target.run(path.read_bytes())


@pytest.mark.parametrize("name", MODULES)
def test_fuzz(name: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tests.fuzz.run", "--target", name, "--runs", str(RUNS)]
    command += ["--timeout", str(TIMEOUT), "--seed", str(SEED), "--work", str(tmp_path)]
    done = subprocess.run(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, check=False
    )
    output = done.stdout.decode(errors="replace")
    crashes = sorted(p.name for p in (tmp_path / name / "artifacts").iterdir())
    assert done.returncode == 0 and not crashes, (
        f"fuzzing {name} failed (rc {done.returncode}, inputs {crashes}; add a failing input to "
        f"tests/fuzz/corpus/{name}/regression-<what> once fixed):\n{output[-6000:]}"
    )
    executed = re.search(r"stat::number_of_executed_units: (\d+)", output)
    assert executed and int(executed.group(1)) >= RUNS, output[-2000:]
