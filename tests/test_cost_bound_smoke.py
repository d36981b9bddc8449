"""Smoke test of the cost-bound benchmark (a tiny shape, one round): it runs and writes its JSON."""

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("jax")

from benchmarks import cost_bound  # noqa: E402

pytestmark = pytest.mark.full  # compiles the loss, the statistics and a QR: the full tier


def test_cost_bound_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    payload = cost_bound.main(["--size", "32", "--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == payload
    assert set(payload["median_ms"]) == {"floor", "rmi_jax", "statistics", "householder", "sgemm"}
    assert all(ms > 0 for ms in payload["median_ms"].values())
    derived = ("rmi_jax_minus_statistics_ms", "statistics_budget_3x_floor_ms")
    assert all(math.isfinite(payload[key]) for key in derived)
    assert payload["products_at_sgemm_rate_ms"] > 0
    ratio = payload["median_ms"]["statistics"] / payload["products_at_sgemm_rate_ms"]
    assert payload["statistics_to_product_bound"] == pytest.approx(ratio)
    assert payload["machine"] and isinstance(payload["cpu_flags"], list)
