"""Runs the float64 JAX parity suite in a process of its own (``jax_enable_x64`` is global)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_x64_parity_suite_passes_in_its_own_process() -> None:
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "parity_tests/x64"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"x64 suite failed:\n{result.stdout}\n{result.stderr}"
    assert " passed" in result.stdout, result.stdout
