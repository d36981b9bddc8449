"""Parity report: every fixture, both dtypes, both backends, against the reference and each other.

Run it as ``python -m parity_tests.report`` (``--fixtures PATTERN``, repeatable, picks fixture
files by glob; the default is every dense ``dense-*.npz`` and label-map ``labels-*.npz`` fixture).
For each fixture and dtype (float32, float64) it prints two rows, ``value`` and ``grad``, with
three errors each and the tolerance each is held to (the named constants of
``parity_tests/tolerances.py``):

- ``jax~ref`` and ``torch~ref``: each backend against a reference. For values the reference is
  the float64 NumPy reference's value. For gradients it is the central finite differences of
  the reference (``ref = fd``) where the fixture has them; float32 gradients of fixtures
  without them are compared with the same backend's float64 gradient (``ref = f64``), as the
  tests do; float64 gradients without them have no reference (``-``).
- ``jax~torch``: the two backends against each other, in the same dtype.

Dense fixtures go through ``rmi_loss`` (mean reduction, with the fixture's ``valid_mask`` where
it has one), label-map fixtures through ``rmi_loss_from_labels``; gradients are with respect to
the prediction (the logits).

Errors are relative: ``|a - b| / |b|`` for values and ``||a - b|| / ||b||`` for gradients. The
float32 value bound has an absolute floor (``|a - b| <= atol + rtol |b|``); it is shown as the
equivalent ``|a - b| / (|b| + atol / rtol)`` against ``rtol``. A broken bound is marked ``!``
and the process exits with status 1.

JAX's float64 route needs ``jax_enable_x64``, a process-wide flag, and its float32 route is
what users get with the flag off. So each JAX dtype runs in a subprocess of its own, with
``JAX_ENABLE_X64`` set accordingly; this process runs PyTorch and never imports JAX. The JAX
values and gradients come from ``jax.jit(jax.value_and_grad(...))``: eager dispatch would be
several times slower to no purpose, since jit and eager agree to float32 rounding (tested in
``test_jax_float32.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from parity_tests.backends import torch_value_and_grad
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tolerances import (
    CROSS_BACKEND_GRAD_RTOL,
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    F64_VALUE_RTOL,
    FD_GRAD_RTOL,
    f32_grad_rtol,
    relative_error,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "float64")
DEFAULT_PATTERNS = ("dense-*.npz", "labels-*.npz")
LABELS_PREFIX = "labels-"  # label-map fixtures: rmi_loss_from_labels (docs/semantics.md#label-maps)

# name -> (value, gradient) for one backend and dtype
Results = dict[str, tuple[float, np.ndarray]]


@dataclass(frozen=True)
class Tolerances:
    """The bounds the report holds the errors to; the defaults are ``tolerances.py``'s."""

    f64_value: float = F64_VALUE_RTOL
    f32_value_rtol: float = F32_VALUE_RTOL
    f32_value_atol: float = F32_VALUE_ATOL
    fd_grad: float = FD_GRAD_RTOL
    f64_cross_grad: float = CROSS_BACKEND_GRAD_RTOL
    f32_grad: Callable[[Fixture], float] = f32_grad_rtol
    # Each float32 backend is within the float32 bound of the reference, so by the triangle
    # inequality the two are within twice that bound of each other (no tighter claim is tested).
    f32_cross_factor: float = 2.0


TOLERANCES = Tolerances()


@dataclass(frozen=True)
class Row:
    """One line of the report: three errors and the bounds they are held to (NaN: no check)."""

    fixture: str
    dtype: str
    quantity: str  # "value" or "grad"
    ref: str  # what "ref" is: "numpy", "fd", "f64" or "-"
    jax_ref: float
    torch_ref: float
    ref_tol: float
    cross: float
    cross_tol: float

    def failures(self) -> list[str]:
        """Names of the errors above their bound (NaN errors are not checks)."""
        pairs = (
            ("jax~ref", self.jax_ref, self.ref_tol),
            ("torch~ref", self.torch_ref, self.ref_tol),
            ("jax~torch", self.cross, self.cross_tol),
        )
        return [name for name, err, tol in pairs if not np.isnan(err) and not err <= tol]


def value_error(actual: float, expected: float, floor: float = 0.0) -> float:
    """``|actual - expected| / (|expected| + floor)``; the absolute error if that is zero."""
    scale = abs(expected) + floor
    error = abs(float(actual) - float(expected))
    return error / scale if scale > 0 else error


def is_labels(fixture: Fixture) -> bool:
    """Whether ``fixture`` is a label-map one (logits and an integer label map)."""
    return fixture.name.startswith(LABELS_PREFIX)


def load_selected(patterns: Sequence[str]) -> list[Fixture]:
    """The fixtures matching any of the glob ``patterns``, once each, sorted by name."""
    by_name = {f.name: f for pattern in patterns for f in load_fixtures(pattern)}
    return [by_name[name] for name in sorted(by_name)]


def _jax_value_and_grad(fixture: Fixture, *, double: bool) -> tuple[float, np.ndarray]:
    """The JAX value and its gradient w.r.t. the prediction, jitted, NCHW."""
    import jax
    import jax.numpy as jnp

    from rmi_jax import rmi_loss, rmi_loss_from_labels

    dtype = jnp.float64 if double else jnp.float32
    if is_labels(fixture):
        # The label loss computes its statistics in the logits' dtype.
        target = jnp.asarray(fixture.target)
        loss = partial(rmi_loss_from_labels, **fixture.options, channel_axis=1)
    else:
        target = jnp.asarray(fixture.target, dtype)
        options = {**fixture.options, "use_double_precision": double, "channel_axis": 1}
        if fixture.valid_mask is not None:  # the masked dense fixtures
            options["valid_mask"] = jnp.asarray(fixture.valid_mask)
        loss = partial(rmi_loss, **options)
    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(fixture.pred, dtype), target)
    return float(value), np.asarray(grad)


def _torch_label_value_and_grad(fixture: Fixture, *, double: bool) -> tuple[float, np.ndarray]:
    """The PyTorch label-map value and its gradient w.r.t. the logits, NCHW."""
    import torch

    from rmi_torch import rmi_loss_from_labels

    dtype = torch.float64 if double else torch.float32
    logits = torch.tensor(fixture.pred, dtype=dtype, requires_grad=True)
    value = rmi_loss_from_labels(
        logits, torch.tensor(fixture.target), **fixture.options, use_double_precision=double
    )
    value.backward()
    return value.item(), logits.grad.numpy()


def jax_worker(dtype: str, out: Path, patterns: Sequence[str]) -> None:
    """Subprocess entry point: write JAX's results for the fixtures to ``out`` (``.npz``)."""
    import jax

    double = dtype == "float64"
    if jax.config.read("jax_enable_x64") != double:
        raise RuntimeError(f"the {dtype} JAX worker needs JAX_ENABLE_X64={int(double)}")
    arrays: dict[str, np.ndarray] = {}
    for fixture in load_selected(patterns):
        value, grad = _jax_value_and_grad(fixture, double=double)
        arrays[f"value/{fixture.name}"] = np.float64(value)
        arrays[f"grad/{fixture.name}"] = grad
    np.savez(out, **arrays)


def start_jax_worker(dtype: str, out: Path, patterns: Sequence[str]) -> subprocess.Popen:
    """Start :func:`jax_worker` in a fresh process with x64 on for float64, off for float32."""
    env = {**os.environ, "JAX_ENABLE_X64": "1" if dtype == "float64" else "0"}
    command = [sys.executable, "-m", "parity_tests.report", "--jax-worker", dtype, str(out)]
    command += [arg for pattern in patterns for arg in ("--fixtures", pattern)]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env)


def load_worker_results(path: Path) -> Results:
    """Read back what :func:`jax_worker` wrote."""
    with np.load(path) as data:
        names = [key.split("/", 1)[1] for key in data.files if key.startswith("value/")]
        return {name: (float(data[f"value/{name}"]), data[f"grad/{name}"]) for name in names}


def torch_results(fixtures: list[Fixture], dtype: str) -> Results:
    """PyTorch's value and gradient for every fixture, in this process."""
    double = dtype == "float64"
    results: Results = {}
    for fixture in fixtures:
        if is_labels(fixture):
            results[fixture.name] = _torch_label_value_and_grad(fixture, double=double)
        else:
            value, grad = torch_value_and_grad(fixture, double=double)
            results[fixture.name] = (float(value), grad)
    return results


def value_row(
    fixture: Fixture, dtype: str, jax: float, torch: float, tolerances: Tolerances = TOLERANCES
) -> Row:
    """Values against the reference and each other (float32: with the absolute floor)."""
    if dtype == "float64":
        floor, tol, cross_tol = 0.0, tolerances.f64_value, tolerances.f64_value
    else:
        floor = tolerances.f32_value_atol / tolerances.f32_value_rtol
        tol = tolerances.f32_value_rtol
        cross_tol = tolerances.f32_cross_factor * tol
    return Row(
        fixture=fixture.name,
        dtype=dtype,
        quantity="value",
        ref="numpy",
        jax_ref=value_error(jax, fixture.value, floor),
        torch_ref=value_error(torch, fixture.value, floor),
        ref_tol=tol,
        cross=value_error(jax, torch, floor),
        cross_tol=cross_tol,
    )


def _cross_error(jax: np.ndarray, torch: np.ndarray, reference: np.ndarray | None) -> float:
    """``||jax - torch||`` relative to the reference gradient's size where there is one: a
    gradient that is zero by the definition (the finite differences say so) leaves both
    backends with rounding noise, whose relative difference means nothing."""
    scale = np.linalg.norm(torch if reference is None else reference)
    error = np.linalg.norm(np.asarray(jax, np.float64) - np.asarray(torch, np.float64))
    return float(error / scale) if scale > 0 else float(error)


def grad_row(
    fixture: Fixture,
    dtype: str,
    jax: np.ndarray,
    torch: np.ndarray,
    jax64: np.ndarray,
    torch64: np.ndarray,
    tolerances: Tolerances = TOLERANCES,
) -> Row:
    """Gradients against finite differences (or float64, see the module doc) and each other."""
    nan = float("nan")
    if dtype == "float64":
        ref_tol, cross_tol = tolerances.fd_grad, tolerances.f64_cross_grad
    else:
        ref_tol = tolerances.f32_grad(fixture)
        cross_tol = tolerances.f32_cross_factor * ref_tol
    if fixture.grad_fd is not None:
        ref, jax_ref, torch_ref = "fd", fixture.grad_fd, fixture.grad_fd
    elif dtype == "float32":
        ref, jax_ref, torch_ref = "f64", jax64, torch64
    else:
        ref, jax_ref, torch_ref = "-", None, None
    return Row(
        fixture=fixture.name,
        dtype=dtype,
        quantity="grad",
        ref=ref,
        jax_ref=nan if jax_ref is None else relative_error(jax, jax_ref),
        torch_ref=nan if torch_ref is None else relative_error(torch, torch_ref),
        ref_tol=ref_tol if jax_ref is not None else nan,
        cross=_cross_error(jax, torch, jax_ref),
        cross_tol=cross_tol,
    )


def build_rows(
    fixtures: list[Fixture],
    jax: dict[str, Results],
    torch: dict[str, Results],
    tolerances: Tolerances = TOLERANCES,
) -> list[Row]:
    """All rows, fixture by fixture, float32 then float64, value then gradient."""
    rows = []
    for fixture in fixtures:
        name = fixture.name
        for dtype in DTYPES:
            values = jax[dtype][name][0], torch[dtype][name][0]
            rows.append(value_row(fixture, dtype, *values, tolerances))
            rows.append(
                grad_row(
                    fixture,
                    dtype,
                    jax[dtype][name][1],
                    torch[dtype][name][1],
                    jax["float64"][name][1],
                    torch["float64"][name][1],
                    tolerances,
                )
            )
    return rows


def format_rows(rows: list[Row]) -> str:
    """The fixed-width table; ``!`` after an error marks a broken bound."""
    width = max(len("fixture"), *(len(r.fixture) for r in rows))

    def cell(err: float, tol: float) -> str:
        if np.isnan(err):
            return f"{'-':>10}"
        return f"{err:9.1e}" + ("!" if not err <= tol else " ")

    def bound(tol: float) -> str:
        return f"{'-':>8}" if np.isnan(tol) else f"{tol:8.1e}"

    header = (
        f"{'fixture':<{width}}  {'dtype':<7} {'quantity':<8} {'ref':<5} {'jax~ref':>10} "
        f"{'torch~ref':>10} {'bound':>8} {'jax~torch':>10} {'bound':>8}  status"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        status = "FAIL " + ",".join(r.failures()) if r.failures() else "ok"
        lines.append(
            f"{r.fixture:<{width}}  {r.dtype:<7} {r.quantity:<8} {r.ref:<5} "
            f"{cell(r.jax_ref, r.ref_tol)} {cell(r.torch_ref, r.ref_tol)} {bound(r.ref_tol)} "
            f"{cell(r.cross, r.cross_tol)} {bound(r.cross_tol)}  {status}"
        )
    return "\n".join(lines)


def collect(
    fixtures: list[Fixture], patterns: Sequence[str]
) -> tuple[dict[str, Results], dict[str, Results]]:
    """JAX results from the two worker processes, PyTorch results from this one meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {dtype: Path(tmp) / f"jax-{dtype}.npz" for dtype in DTYPES}
        workers = {dtype: start_jax_worker(dtype, paths[dtype], patterns) for dtype in DTYPES}
        torch = {dtype: torch_results(fixtures, dtype) for dtype in DTYPES}
        for dtype, worker in workers.items():
            if worker.wait() != 0:
                raise RuntimeError(f"the {dtype} JAX worker failed (exit {worker.returncode})")
        jax = {dtype: load_worker_results(paths[dtype]) for dtype in DTYPES}
    return jax, torch


def main(argv: list[str] | None = None, tolerances: Tolerances = TOLERANCES) -> int:
    """Print the report; return 0 if every bound in ``tolerances`` holds, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fixtures",
        action="append",
        metavar="PATTERN",
        help="glob of fixture files to report (repeatable; default: every fixture)",
    )
    parser.add_argument("--jax-worker", nargs=2, metavar=("DTYPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    patterns = args.fixtures or DEFAULT_PATTERNS
    if args.jax_worker:
        jax_worker(args.jax_worker[0], Path(args.jax_worker[1]), patterns)
        return 0

    fixtures = load_selected(patterns)
    jax, torch = collect(fixtures, patterns)
    rows = build_rows(fixtures, jax, torch, tolerances)
    print(format_rows(rows))
    failed = [r for r in rows if r.failures()]
    checks = sum(not np.isnan(e) for r in rows for e in (r.jax_ref, r.torch_ref, r.cross))
    print(
        f"\n{len(fixtures)} fixtures x {len(DTYPES)} dtypes, {checks} checks: "
        + (f"{len(failed)} rows FAIL" if failed else "all within bounds")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
