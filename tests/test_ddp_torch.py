"""``examples/ddp_torch.py``: DDP (gloo, 2 processes) gradients equal the single-process ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.full  # two training processes and a reference run

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 2
BATCH_SIZE = 8  # 4 examples per process
# DDP averages per-process mean gradients; with equal shares that is the full-batch mean, so the
# two differ by float32 reassociation only (the loss: float64 statistics, measured 6e-9; the
# gradients: float32 convolutions, measured 1.3e-6 overall).
LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5
# A single small parameter array (a bias) averages fewer rounding errors: measured 4.8e-6.
LEAF_GRAD_RTOL = 5e-5


def test_ddp_loss_and_gradients_equal_single_process() -> None:
    command = [
        sys.executable,
        "examples/ddp_torch.py",
        "--check",
        "--world-size",
        str(PROCESSES),
        "--batch-size",
        str(BATCH_SIZE),
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    check = json.loads(result.stdout.strip().splitlines()[-1])
    assert check["processes"] == PROCESSES
    assert check["loss_rel_diff"] < LOSS_RTOL, check
    assert check["grad_rel_diff"] < GRAD_RTOL, check
    assert check["grad_max_leaf_rel_diff"] < LEAF_GRAD_RTOL, check
