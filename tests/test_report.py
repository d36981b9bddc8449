"""``python -m parity_tests.report``: lists what it checks, passes, and fails on a broken bound.

Each run starts two JAX processes (float32 and float64), so the tests report a few fixtures,
one dense and one label-map (``--fixtures``), not all of them; CI's parity tests cover the rest.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")

from parity_tests.report import TOLERANCES, main  # noqa: E402

pytestmark = pytest.mark.full  # each report starts two JAX processes

REPO_ROOT = Path(__file__).resolve().parent.parent
PATTERNS = ("dense-radius1.npz", "labels-default.npz")
FIXTURE_ARGS = [arg for pattern in PATTERNS for arg in ("--fixtures", pattern)]


def test_report_passes_and_lists_every_selected_fixture() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "parity_tests.report", *FIXTURE_ARGS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"report failed:\n{result.stdout}\n{result.stderr}"
    rows = [line.split() for line in result.stdout.splitlines()]
    listed = {(r[0], r[1], r[2]) for r in rows if len(r) > 3 and r[1] in ("float32", "float64")}
    expected = {
        (pattern.removesuffix(".npz"), dtype, quantity)
        for pattern in PATTERNS
        for dtype in ("float32", "float64")
        for quantity in ("value", "grad")
    }
    assert listed == expected
    assert "all within bounds" in result.stdout
    assert "FAIL" not in result.stdout


def test_a_broken_bound_gives_a_nonzero_exit(capsys: pytest.CaptureFixture[str]) -> None:
    # No float64 backend reproduces the reference to the last bit on every fixture: a zero
    # bound must be reported as broken.
    zero = replace(TOLERANCES, f64_value=0.0, fd_grad=0.0)
    assert main(FIXTURE_ARGS, tolerances=zero) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "rows FAIL" in out
