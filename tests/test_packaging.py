"""The distribution: one version everywhere, licence and citation files, the ImportError of a
backend without its framework, and (full tier) a built wheel that works in a fresh environment
with only the ``jax`` extra."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

import rmi_core
from parity_tests import reference
from parity_tests.tolerances import F32_VALUE_ATOL, F32_VALUE_RTOL

ROOT = Path(__file__).resolve().parent.parent
VERSION = rmi_core.__version__
PACKAGES = ("rmi_core", "rmi_jax", "rmi_torch")
# Building (in isolated environments) and installing jax into a fresh one take about a minute.
INSTALL_TIMEOUT_S = 900


def run_python(*args: str, python: str = sys.executable, cwd: Path = ROOT, timeout: float = 120):
    """Run ``python *args`` without this process's PYTHONPATH; return the completed process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_backends_report_the_one_version() -> None:
    import rmi_jax

    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION
    assert rmi_jax.__version__ == VERSION
    rmi_torch = pytest.importorskip("rmi_torch")
    assert rmi_torch.__version__ == VERSION


def test_pyproject_reads_the_version_and_declares_the_licence_file() -> None:
    tomllib = pytest.importorskip("tomllib", reason="the standard library has tomllib from 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rmi_core.__version__"}
    assert project["project"]["license"] == "MIT"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_ci_tests_the_declared_lower_bounds() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["jax"]]
    declared += project["optional-dependencies"]["torch"]
    bounds = dict(re.fullmatch(r"(\w+)>=([\d.]+)", spec).groups() for spec in declared)
    assert set(bounds) == {"numpy", "jax", "torch"}, bounds
    oldest = next(
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if "venv-oldest/bin/pip" in line
    )
    pins = dict(re.findall(r'"(\w+)==([\d.]+?)(?:\.0|\.\*)?"', oldest))
    # jax and jaxlib come in matching releases; the others are the bound's minor series.
    assert pins == {**bounds, "jaxlib": bounds["jax"]}, (pins, bounds)


def test_changelog_and_citation_name_the_version() -> None:
    assert re.search(rf"^## {re.escape(VERSION)}\b", (ROOT / "CHANGELOG.md").read_text(), re.M)
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(VERSION)}$", citation, re.M)
    assert "Region Mutual Information Loss for Semantic Segmentation" in citation


@pytest.mark.parametrize(
    ("package", "framework_module", "framework", "extra"),
    [("rmi_jax", "jax", "JAX", "jax"), ("rmi_torch", "torch", "PyTorch", "torch")],
)
def test_importing_a_backend_without_its_framework_names_the_extra(
    package: str, framework_module: str, framework: str, extra: str
) -> None:
    # None in sys.modules makes ``import <framework>`` fail, as in an environment without it.
    code = f"import sys; sys.modules[{framework_module!r}] = None; import {package}"
    result = run_python("-c", code)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError:"), result.stderr
    assert framework in last_line and f'pip install "rmi-loss[{extra}]"' in last_line


def test_rmi_core_imports_without_either_framework() -> None:
    code = "import sys; sys.modules['jax'] = sys.modules['torch'] = None; import rmi_core.options"
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr


# Run inside the fresh environment: the loss of seeded NumPy inputs, and what was installed.
FRESH_ENVIRONMENT_CHECK = """
import importlib.metadata, importlib.util, json, pathlib
import numpy as np
import rmi_jax

pred = np.random.default_rng(0).normal(size=(2, 24, 24, 3)).astype(np.float32)
target = (np.random.default_rng(1).random((2, 24, 24, 3)) < 0.5).astype(np.float32)
try:
    import rmi_torch
    torch_error = None
except ImportError as error:
    torch_error = str(error)
files = [str(f) for f in importlib.metadata.distribution("rmi-loss").files]
print(json.dumps({
    "loss": float(rmi_jax.rmi_loss(pred, target, with_logits=True)),
    "version": rmi_jax.__version__,
    "rmi_jax": rmi_jax.__file__,
    "typed": [pathlib.Path(importlib.util.find_spec(p).origin).with_name("py.typed").is_file()
              for p in ("rmi_core", "rmi_jax", "rmi_torch")],
    "licence": [f for f in files if f.endswith("LICENSE")],
    "not_installed": [m for m in ("flax", "optax", "torch") if importlib.util.find_spec(m) is None],
    "torch_error": torch_error,
}))
"""


@pytest.mark.full
def test_wheel_with_only_the_jax_extra_computes_the_loss(tmp_path: Path) -> None:
    """Build the sdist and, from it, the wheel, as a release does (isolated build environments
    from the package index); install the wheel with the ``jax`` extra into a fresh virtual
    environment; compute a loss there and compare it with the float64 NumPy reference."""
    dist = tmp_path / "dist"
    built = run_python("-m", "build", "--outdir", str(dist), str(ROOT), timeout=INSTALL_TIMEOUT_S)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob(f"rmi_loss-{VERSION}-py3-none-any.whl")
    (sdist,) = dist.glob(f"rmi_loss-{VERSION}.tar.gz")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"rmi_loss-{VERSION}.dist-info/METADATA").decode()
    assert f"rmi_loss-{VERSION}.dist-info/licenses/LICENSE" in names
    assert {f"{package}/py.typed" for package in PACKAGES} <= names
    assert {f"Version: {VERSION}", "License-Expression: MIT"} <= set(metadata.splitlines())
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    assert f"rmi_loss-{VERSION}/LICENSE" in names
    assert {f"rmi_loss-{VERSION}/{package}/py.typed" for package in PACKAGES} <= names

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = str(environment / "bin" / "python")
    installed = run_python(
        "-m", "pip", "install", f"{wheel}[jax]", python=python, timeout=INSTALL_TIMEOUT_S
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # From an empty folder, so the checkout cannot be imported instead of the installed wheel.
    checked = run_python("-c", FRESH_ENVIRONMENT_CHECK, python=python, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert Path(report["rmi_jax"]).is_relative_to(environment)
    assert report["version"] == VERSION
    assert report["typed"] == [True, True, True]
    assert report["licence"], "no LICENSE among the installed files"
    # The jax extra brings JAX only: the examples' libraries and PyTorch stay out.
    assert report["not_installed"] == ["flax", "optax", "torch"]
    assert 'pip install "rmi-loss[torch]"' in report["torch_error"]

    pred = np.random.default_rng(0).normal(size=(2, 24, 24, 3))
    target = (np.random.default_rng(1).random((2, 24, 24, 3)) < 0.5).astype(np.float64)
    expected = reference.dense_rmi_loss(
        np.moveaxis(pred.astype(np.float32), -1, 1), np.moveaxis(target, -1, 1), with_logits=True
    )
    np.testing.assert_allclose(report["loss"], expected, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)
