"""``examples/sharded_flax.py``: data-parallel loss and gradients equal the single-device ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICES = 8
# The sharded step sums the same float32 terms in another order (per device, then across
# devices): reassociation only, measured 0 on the loss and 2e-7 on the gradients.
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5
# A single small parameter array (a bias) averages fewer rounding errors: measured 1.3e-6.
LEAF_GRAD_RTOL = 5e-5

pytestmark = pytest.mark.full  # a process of its own with eight host devices


def test_sharded_loss_and_gradients_equal_single_device() -> None:
    # The device count must be fixed before JAX starts, hence a process of its own.
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"}
    result = subprocess.run(
        [sys.executable, "examples/sharded_flax.py", "--check", "--batch-size", str(DEVICES)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    check = json.loads(result.stdout.strip().splitlines()[-1])
    assert check["devices"] == DEVICES
    assert check["batch_devices"] == DEVICES, check["batch_sharding"]
    assert check["loss_rel_diff"] < LOSS_RTOL, check
    assert check["grad_rel_diff"] < GRAD_RTOL, check
    assert check["grad_max_leaf_rel_diff"] < LEAF_GRAD_RTOL, check
