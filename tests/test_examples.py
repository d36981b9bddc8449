"""The example scripts run end to end (a few steps) and write their outputs.

Each script runs in a subprocess, as a user runs it (``python examples/<script>.py``), so its
own ``sys.path`` set-up and command line are what is tested. Those runs are in the full tier.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from examples.common import schedule_settings, warmup_cosine

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE_STEPS = 3
# Runs a script with ``import torch`` failing, as in a venv with only the jax and examples
# extras (the README's first command): the Flax demo must not need PyTorch.
WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` from the repository root; fail the test with its output if it fails."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def check_demo_outputs(out: Path, framework: str) -> None:
    """Both runs' metrics and losses in the JSON, a PNG beside it, the table on stdout."""
    assert (out / f"train_{framework}.png").stat().st_size > 0
    report = json.loads((out / f"train_{framework}.json").read_text())
    assert report["steps"] == SMOKE_STEPS
    assert set(report["metrics"]) == {"bce", "bce+rmi"}
    for run_name, losses in report["losses"].items():
        assert len(losses) == SMOKE_STEPS, run_name
        assert all(math.isfinite(v) for v in losses), run_name
    for metrics in report["metrics"].values():
        assert 0.0 <= metrics["miou"] <= 1.0


@pytest.mark.full
def test_train_flax_runs_without_torch(tmp_path: Path) -> None:
    script = ("examples/train_flax.py", "--steps", str(SMOKE_STEPS), "--out", str(tmp_path))
    result = run("-c", WITHOUT_TORCH, *script)
    check_demo_outputs(tmp_path, "flax")
    assert "mean IoU" in result.stdout and "boundary F1" in result.stdout


@pytest.mark.full
def test_train_flax_3d_runs(tmp_path: Path) -> None:
    run("examples/train_flax_3d.py", "--steps", str(SMOKE_STEPS), "--out", str(tmp_path))
    report = json.loads((tmp_path / "train_flax_3d.json").read_text())
    assert len(report["metrics"]) == 2
    for metrics in report["metrics"].values():
        assert 0.0 <= metrics["miou"] <= 1.0


@pytest.mark.full
def test_train_torch_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    run("examples/train_torch.py", "--steps", str(SMOKE_STEPS), "--out", str(tmp_path))
    check_demo_outputs(tmp_path, "torch")


@pytest.mark.full
def test_loss_curves_of_both_backends_coincide(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    # The script itself exits non-zero if the JAX and PyTorch curves differ.
    result = run("examples/loss_curves.py", "--size", "64", "--points", "5", "--out", str(tmp_path))
    assert (tmp_path / "loss_curves.png").stat().st_size > 0
    assert result.stdout.count("JAX vs PyTorch") == 6  # 3 starts x 2 downsampling methods


def test_torch_demo_follows_the_optax_schedule() -> None:
    optax = pytest.importorskip("optax")
    steps = 40
    schedule = optax.warmup_cosine_decay_schedule(**schedule_settings(steps))
    # Past the end too: both hold the final rate there.
    for step in range(steps + 5):
        assert warmup_cosine(step, steps) == pytest.approx(float(schedule(step)), rel=1e-6)


def test_docs_figures_are_committed() -> None:
    page = REPO_ROOT / "docs" / "examples.md"
    text = page.read_text()
    section = text.split("<!-- examples:start -->", 1)[1].split("<!-- examples:end -->", 1)[0]
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section)
    assert {"train_flax.png", "loss_curves.png"} <= set(figures)
    for figure in figures:
        assert (page.parent / figure).is_file(), figure
