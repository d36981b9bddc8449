"""Smoke test of the cost-bound benchmark (a tiny shape, one round): it runs and writes its JSON."""

import json
from pathlib import Path

import pytest

pytest.importorskip("jax")

from benchmarks import cost_bound  # noqa: E402

pytestmark = pytest.mark.full  # compiles the loss, the statistics and the floors: the full tier


def test_cost_bound_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    payload = cost_bound.main(["--size", "32", "--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == payload
    assert set(payload["median_ms"]) == {"floor", "rmi_jax", "statistics", "statistics_floor"}
    assert all(ms > 0 for ms in payload["median_ms"].values())
    ms = payload["median_ms"]
    assert payload["statistics_to_floor"] == pytest.approx(
        ms["statistics"] / ms["statistics_floor"]
    )
    assert payload["rest_to_floor"] == pytest.approx(
        (ms["rmi_jax"] - ms["statistics"]) / ms["floor"]
    )
    assert payload["machine"] and isinstance(payload["cpu_flags"], list)
