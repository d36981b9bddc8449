"""Smoke tests of the benchmark harness and of its literal baseline (tiny shapes, a few seconds)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import bench  # noqa: E402
from benchmarks.baseline_torch import baseline_rmi_loss  # noqa: E402

# Baseline vs the independent NumPy reference, both float64 end to end: they differ only in
# summation order and LAPACK routines (about 1e-13 here); docs/semantics.md#tolerances asks 1e-10.
REFERENCE_RTOL = 1e-10
# Closed form of constant inputs (docs/semantics.md#float32-facts), float64 inputs: rounding only.
CLOSED_FORM_RTOL_F64 = 1e-12
# The same in float32: a few ulps of float32 accumulated over a handful of operations.
CLOSED_FORM_RTOL_F32 = 1e-6

TINY_SHAPE = (1, 2, 24, 24)
# Large enough (128 KiB per input) that its buffers exceed the 64 KiB mmap threshold the
# memory worker sets, so resident-set growth is visible; still milliseconds to run.
RSS_SHAPE = (1, 2, 128, 128)

RESULT_KEYS = {"row", "shape", "status", "errors", "fwd_ms", "fwdbwd_ms", "peak_extra_mib"}
META_KEYS = {"date", "device", "device_name", "cpu_count", "jax_version", "torch_version"}


def _importable(module: str, attr: str = "rmi_loss") -> bool:
    try:
        return hasattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001 - a backend being written may fail to import at all
        return False


def _smoke_rows() -> list[str]:
    rows = ["baseline-f64", "baseline-f32", "floor"]
    if _importable("rmi_jax"):
        rows.append("rmi_jax")
    if _importable("rmi_torch"):
        rows += ["rmi_torch-f32", "rmi_torch-f64"]
    return rows


def _finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_in_process_writes_complete_json(tmp_path: Path) -> None:
    rows = _smoke_rows()
    out = tmp_path / "results.json"
    argv = ["--device", "cpu", "--sizes", str(TINY_SHAPE[2]), "--batch", str(TINY_SHAPE[0])]
    argv += ["--classes", str(TINY_SHAPE[1]), "--repeats", "1", "--warmup", "1", "--in-process"]
    argv += ["--rows", *rows, "--out", str(out)]
    bench.main(argv)

    payload = json.loads(out.read_text())
    assert {"meta", "methods", "columns", "results", "scaling"} <= payload.keys()
    assert META_KEYS <= payload["meta"].keys()
    assert payload["meta"]["repeats"] == 1
    assert [r["row"] for r in payload["results"]] == rows
    for res in payload["results"]:
        assert res["status"] == "ok", res
        assert RESULT_KEYS <= res.keys(), res
        assert res["shape"] == list(TINY_SHAPE)
        assert _finite_positive(res["fwd_ms"]) and _finite_positive(res["fwdbwd_ms"]), res
        # In-process RSS may legitimately read 0 at this size; it must still be a number.
        assert math.isfinite(res["peak_extra_mib"]) and res["peak_extra_mib"] >= 0, res
        assert res["memory_method"] in bench.MEMORY_METHODS
        assert _finite_positive(res["fwdbwd_ratio_to_floor"]), res
        assert _finite_positive(res["fwdbwd_speedup_vs_baseline_f64"]), res

    floor = next(r for r in payload["results"] if r["row"] == "floor")
    assert floor["fwdbwd_ratio_to_floor"] == 1.0
    # The floor writes one gradient-sized output, so XLA must account for at least that.
    assert floor["memory_method"] == "xla-memory-analysis"
    assert floor["peak_extra_x_input"] >= 1.0
    assert "floor" in bench.format_table(payload["results"])


def test_memory_worker_sees_the_gradient() -> None:
    """The RSS method, in its own subprocess, must see at least the gradient of the logits."""
    spec = bench.Spec(row="baseline-f64", shape=RSS_SHAPE, device="cpu", task="mem")
    result = bench.run_worker(spec, timeout=120, memory_run=True)
    assert result.get("status") == "ok", result
    assert result["memory"]["rss_bytes"] >= bench.input_bytes(RSS_SHAPE)


@pytest.mark.skipif(not _importable("rmi_jax"), reason="rmi_jax.rmi_loss not importable yet")
def test_x64_row_runs_in_its_own_process() -> None:
    args = argparse.Namespace(
        device="cpu", repeats=1, warmup=1, seed=0, in_process=True, timeout=300.0
    )
    res = bench.measure_row("rmi_jax-x64", TINY_SHAPE, args, modes=("fwdbwd",))
    assert res["status"] == "ok", res
    assert res["info"]["jax_enable_x64"] is True
    assert _finite_positive(res["fwdbwd_ms"])


def test_row_failure_is_recorded_not_raised() -> None:
    # A map smaller than the radius after pooling is an input error inside the loss.
    spec = bench.Spec(row="baseline-f64", shape=(1, 1, 4, 4), device="cpu", repeats=1, warmup=0)
    res = bench._finalise(bench.measure(spec, in_process=True), spec)
    assert res["status"] == "error"
    assert "ValueError" in res["errors"]["fwd"] and "ValueError" in res["errors"]["fwdbwd"]


@pytest.mark.parametrize("double", [True, False])
def test_baseline_constant_inputs_closed_form(double: bool) -> None:
    n, c, bce_weight, eps = 2, 3, 0.5, 5e-4
    dtype = torch.float64 if double else torch.float32
    logits = torch.zeros(n, c, 24, 24, dtype=dtype)
    target = torch.ones(n, c, 24, 24, dtype=dtype)
    value = baseline_rmi_loss(logits, target, double=double, bce_weight=bce_weight, epsilon=eps)
    # Constant maps: centred rows vanish, M = 0, each (n, c) gives 0.5*log((sqrt(eps)+1e-8)^2);
    # BCE at logit 0 against target 1 is log 2.
    rmi = c * 0.5 * math.log((math.sqrt(eps) + 1e-8) ** 2)
    expected = (1 - bce_weight) * rmi + bce_weight * math.log(2.0)
    rtol = CLOSED_FORM_RTOL_F64 if double else CLOSED_FORM_RTOL_F32
    np.testing.assert_allclose(value.item(), expected, rtol=rtol)


# The baseline against the NumPy reference: parity_tests/test_reference.py, on every fixture.


@pytest.mark.skipif(not _importable("rmi_torch"), reason="rmi_torch.rmi_loss not importable yet")
def test_baseline_and_rmi_torch_compute_the_same_loss() -> None:
    """The speed-ups compare like with like only if the rows compute the same value."""
    import rmi_torch

    rng = np.random.default_rng(99)
    logits = torch.from_numpy(rng.standard_normal(TINY_SHAPE))
    target = torch.from_numpy(rng.integers(0, 2, size=TINY_SHAPE).astype(np.float64))
    expected = baseline_rmi_loss(logits, target, double=True)
    value = rmi_torch.rmi_loss(logits, target, with_logits=True, use_double_precision=True)
    np.testing.assert_allclose(value.item(), expected.item(), rtol=REFERENCE_RTOL)
