"""Smoke tests of the benchmark harness and of its literal baseline (tiny shapes, a few seconds)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import bench, machine, measure, report, rows, targets, workers  # noqa: E402
from parity_tests.baseline_torch import baseline_rmi_loss  # noqa: E402

pytestmark = pytest.mark.full  # subprocesses and compilations: the full tier

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
META_KEYS = {
    "date",
    "device",
    "device_name",
    "cpu_model",
    "cpu_flags",
    "cpu_count",
    "jax_version",
    "torch_version",
}


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
    assert {"meta", "methods", "columns", "results", "targets", "scaling"} <= payload.keys()
    assert payload["complete"] is True
    assert META_KEYS <= payload["meta"].keys()
    assert payload["meta"]["repeats"] == 1
    assert payload["meta"]["cpu_flags"] == machine.cpu_flags()
    # No 8x21x256x256 row in this run: every CPU target is listed, none is judged.
    assert len(payload["targets"]) == sum(t.device == "cpu" for t in targets.TARGETS) > 0
    assert all(t["measured"] is None and t["met"] is None for t in payload["targets"])
    assert [r["row"] for r in payload["results"]] == rows
    for res in payload["results"]:
        assert res["status"] == "ok", res
        assert RESULT_KEYS <= res.keys(), res
        assert res["shape"] == list(TINY_SHAPE)
        assert _finite_positive(res["fwd_ms"]) and _finite_positive(res["fwdbwd_ms"]), res
        # In-process RSS may legitimately read 0 at this size; it must still be a number.
        assert math.isfinite(res["peak_extra_mib"]) and res["peak_extra_mib"] >= 0, res
        assert res["memory_method"] in measure.MEMORY_METHODS
        assert _finite_positive(res["fwdbwd_ratio_to_floor"]), res
        assert _finite_positive(res["fwdbwd_speedup_vs_baseline_f64"]), res

    floor = next(r for r in payload["results"] if r["row"] == "floor")
    assert floor["fwdbwd_ratio_to_floor"] == 1.0
    # The floor writes one gradient-sized output, so XLA must account for at least that.
    assert floor["memory_method"] == "xla-memory-analysis"
    assert floor["peak_extra_x_input"] >= 1.0
    assert "floor" in report.format_table(payload["results"])


def test_memory_worker_sees_the_gradient() -> None:
    """The RSS method, in its own subprocess, must see at least the gradient of the logits."""
    spec = rows.Spec(row="baseline-f64", shape=RSS_SHAPE, device="cpu", task="mem")
    result = workers.run_worker(spec, timeout=120, memory_run=True)
    assert result.get("status") == "ok", result
    assert result["memory"]["rss_bytes"] >= rows.input_bytes(RSS_SHAPE)


@pytest.mark.skipif(not _importable("rmi_jax"), reason="rmi_jax.rmi_loss not importable yet")
def test_x64_row_runs_in_its_own_process() -> None:
    args = argparse.Namespace(
        device="cpu", repeats=1, warmup=1, seed=0, in_process=True, timeout=300.0
    )
    res = workers.measure_row("rmi_jax-x64", TINY_SHAPE, args, modes=("fwdbwd",))
    assert res["status"] == "ok", res
    assert res["info"]["jax_enable_x64"] is True
    assert _finite_positive(res["fwdbwd_ms"])


def test_row_failure_is_recorded_not_raised() -> None:
    # A map smaller than the radius after pooling is an input error inside the loss.
    spec = rows.Spec(row="baseline-f64", shape=(1, 1, 4, 4), device="cpu", repeats=1, warmup=0)
    res = measure.finalise(measure.measure(spec, in_process=True), spec)
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


def test_targets_are_judged_on_the_run_s_own_figures() -> None:
    target = targets.Target("test", "cuda", targets.square(256), "rmi_jax", "fwdbwd_ms", "<", 1.0)
    shape = list(target.shape)
    assert targets.judge(target, [{"row": "rmi_jax", "shape": shape, "fwdbwd_ms": 0.9}])["met"]
    late = targets.judge(target, [{"row": "rmi_jax", "shape": shape, "fwdbwd_ms": 1.0}])
    assert late["met"] is False and late["measured"] == 1.0
    other_shape = [{"row": "rmi_jax", "shape": [8, 21, 512, 512], "fwdbwd_ms": 0.5}]
    assert targets.judge(target, other_shape)["met"] is None
    assert target.describe() == "rmi_jax fwd+bwd ms < 1 at 8x21x256x256"


def test_speedup_targets_use_the_same_run_s_baseline() -> None:
    shape = [8, 21, 512, 512]
    results = [
        {"row": "baseline-f64", "shape": shape, "fwdbwd_ms": 40.0},
        {"row": "baseline-f32", "shape": shape, "fwdbwd_ms": 10.0},
        {"row": "rmi_jax", "shape": shape, "fwdbwd_ms": 2.5},
        {"row": "rmi_torch-f32", "shape": shape, "fwdbwd_ms": 1.0},
    ]
    report.add_comparisons(results)
    judged = {(j["row"], j["figure"]): j for j in targets.judge_all(results, "cuda")}
    # 40 / 2.5 = 16 < 20 and 10 / 2.5 = 4 < 5; 40 / 1 = 40 and 10 / 1 = 10.
    assert judged[("rmi_jax", "fwdbwd_speedup_vs_baseline_f64")]["met"] is False
    assert judged[("rmi_jax", "fwdbwd_speedup_vs_baseline_f32")]["met"] is False
    assert judged[("rmi_torch-f32", "fwdbwd_speedup_vs_baseline_f64")]["met"] is True
    assert judged[("rmi_torch-f32", "fwdbwd_speedup_vs_baseline_f32")]["met"] is True


def test_comparison_with_an_earlier_run_flags_only_non_overlapping_samples() -> None:
    shape = [8, 21, 64, 64]

    def run(row: str, samples: list[float]) -> dict:
        return {"row": row, "shape": shape, "fwdbwd_ms": sorted(samples)[1],
                "fwdbwd_samples_ms": samples}  # fmt: skip

    before = [run("rmi_jax", [10.0, 11.0, 12.0]), run("floor", [1.0, 1.1, 1.2])]
    now = [run("rmi_jax", [11.5, 13.0, 14.0]), run("floor", [1.3, 1.4, 1.5])]
    compared = {c["row"]: c for c in report.compare_runs(before, now)}
    assert compared["rmi_jax"]["slower_beyond_noise"] is False  # 11.5 is inside 10-12
    assert compared["floor"]["slower_beyond_noise"] is True  # 1.3 is above 1.2
    assert compared["floor"]["ratio"] == pytest.approx(1.4 / 1.1)


def test_cpu_flags_are_the_known_simd_flags_this_cpu_reports() -> None:
    flags = machine.cpu_flags()
    assert flags == [f for f in machine.SIMD_FLAGS if f in flags]
    if Path("/proc/cpuinfo").exists() and platform.machine() == "x86_64":
        assert "sse4_2" in flags  # every x86-64 CPU of the last fifteen years has it


def test_tf32_plugin_sets_torch_precision_before_each_test(tmp_path: Path) -> None:
    test_file = tmp_path / "test_precision_seen.py"
    test_file.write_text(
        "import torch\n\n\n"
        "def test_first():\n"
        "    assert torch.get_float32_matmul_precision() == 'high'\n"
        "    torch.set_float32_matmul_precision('highest')\n\n\n"
        "def test_second():\n"
        "    assert torch.get_float32_matmul_precision() == 'high'\n"
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "benchmarks.tf32", "-p", "no:cacheprovider"]
    env = workers.subprocess_env({"JAX_PLATFORMS": "cpu"})
    proc = subprocess.run(
        [*cmd, str(test_file)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "benchmarks.tf32: torch float32 matmul precision 'high'" in proc.stdout


def test_gpu_check_script_parses() -> None:
    script = Path(bench.__file__).with_name("gpu_check.sh")
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("peak_after, method", [(9000, "jax-device-peak"), (5000, "xla")])
def test_jax_device_peak_is_used_only_where_the_call_raised_the_peak(peak_after, method) -> None:
    # JAX cannot reset its device peak: a call that stays below the compilation's scratch peak
    # (5000 bytes here) shows nothing, and the XLA analysis stands in.
    spec = rows.Spec(row="rmi_jax", shape=(1, 1, 32, 32), device="cuda", modes=("fwdbwd",))
    peak = {"bytes_in_use_before": 1000, "peak_before": 5000, "peak_after": peak_after}
    xla = {"fwdbwd": {"extra_bytes": 3000}}
    result = {"row": "rmi_jax", "shape": [1, 1, 32, 32], "fwdbwd_ms": 1.0, "errors": {},
              "memory": {"jax_device_peak": peak, "xla": xla}}  # fmt: skip
    result = measure.finalise(result, spec)
    expected = {"jax-device-peak": peak_after - 1000, "xla": 3000}[method]
    assert result["peak_extra_mib"] * measure.MIB == expected
    assert result["memory_method"].startswith(method)
