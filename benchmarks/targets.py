"""The issues' speed and memory targets, judged on one run's results.

Each target names a row, the shape it is judged at (8x21xSxS, or the volume row's), a figure
of that row's result (a key of the results JSON) and a bound. The ratios come from the same
run as the row's own time (``benchmarks.report.add_comparisons``), so a target is met or not
within one run.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BATCH, CLASSES = 8, 21

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
}
_FIGURES = {
    "fwdbwd_ms": "fwd+bwd ms",
    "fwdbwd_speedup_vs_baseline_f64": "fwd+bwd speed-up vs baseline-f64",
    "fwdbwd_speedup_vs_baseline_f32": "fwd+bwd speed-up vs baseline-f32",
    "peak_extra_x_input": "peak extra memory in inputs",
    "fwdbwd_per_voxel_x_image": "fwd+bwd time per voxel over the image's per pixel",
}
# Issue 22's volume row, and the image with as many elements (768 x 768 = 64 x 96 x 96).
VOLUME_SHAPE = (2, 4, 64, 96, 96)
VOLUME_IMAGE_SHAPE = (2, 4, 768, 768)


def square(size: int) -> tuple[int, int, int, int]:
    """The issues' image shape ``8 x 21 x size x size``."""
    return (BATCH, CLASSES, size, size)


@dataclass(frozen=True)
class Target:
    """``row``'s ``figure`` at ``shape`` on ``device`` must satisfy ``comparison`` against
    ``bound``; ``issue`` says where the target was set."""

    issue: str
    device: str
    shape: tuple[int, ...]
    row: str
    figure: str
    comparison: str
    bound: float

    def describe(self) -> str:
        """One line, e.g. ``rmi_jax fwd+bwd ms < 1 at 8x21x256x256``."""
        shape = "x".join(map(str, self.shape))
        return f"{self.row} {_FIGURES[self.figure]} {self.comparison} {self.bound:g} at {shape}"


def _gpu_targets() -> list[Target]:
    # Issue 12, item 4: one H200, forward+backward, same run.
    issue = "12.4 (GPU)"
    targets = [
        Target(issue, "cuda", square(256), "rmi_jax", "fwdbwd_ms", "<", 1.0),
        Target(issue, "cuda", square(512), "rmi_jax", "fwdbwd_ms", "<", 3.0),
    ]
    for row in ("rmi_jax", "rmi_torch-f32"):
        targets += [
            Target(issue, "cuda", square(512), row, "fwdbwd_speedup_vs_baseline_f64", ">=", 20.0),
            Target(issue, "cuda", square(512), row, "fwdbwd_speedup_vs_baseline_f32", ">=", 5.0),
        ]
    for size in (256, 512):
        for row in ("rmi_jax", "rmi_torch-f32"):
            targets.append(
                Target(issue, "cuda", square(size), row, "peak_extra_x_input", "<=", 3.0)
            )
    return targets


def _cpu_targets() -> list[Target]:
    # Issue 12, item 5, on every CPU family, same run (the statistics' bound is cost_bound's).
    issue = "12.5 (CPU)"
    return [
        Target(issue, "cpu", square(256), "rmi_jax", "fwdbwd_speedup_vs_baseline_f32", ">=", 3.0),
        Target(issue, "cpu", square(256), "rmi_jax", "fwdbwd_speedup_vs_baseline_f64", ">=", 6.0),
        Target(
            issue, "cpu", square(256), "rmi_torch-f32", "fwdbwd_speedup_vs_baseline_f32", ">=", 2.0
        ),
    ]


def _lag_product_targets() -> list[Target]:
    # Issue 21, item 3, on the host's CPU family, same run (the statistics' floor is cost_bound's).
    issue = "21.3 (CPU)"
    return [
        Target(issue, "cpu", square(256), "rmi_jax", "fwdbwd_speedup_vs_baseline_f64", ">=", 8.0),
        Target(issue, "cpu", square(256), "rmi_jax", "fwdbwd_speedup_vs_baseline_f32", ">=", 5.0),
        Target(
            issue, "cpu", square(256), "rmi_torch-f32", "fwdbwd_speedup_vs_baseline_f32", ">=", 3.0
        ),
        Target(issue, "cpu", square(256), "rmi_jax", "peak_extra_x_input", "<=", 2.0),
        Target(issue, "cpu", square(256), "rmi_torch-f32", "peak_extra_x_input", "<=", 2.0),
    ]


def _volume_targets() -> list[Target]:
    # Issue 22, item 6, on the host's CPU family, same run: against the naive float64 route, the
    # memory, and the cost per voxel against the image of as many pixels.
    issue = "22.6 (CPU)"
    targets = []
    for row in ("rmi_jax", "rmi_torch-f32"):
        targets += [
            Target(issue, "cpu", VOLUME_SHAPE, row, "fwdbwd_speedup_vs_baseline_f64", ">=", 3.0),
            Target(issue, "cpu", VOLUME_SHAPE, row, "peak_extra_x_input", "<=", 3.0),
            Target(issue, "cpu", VOLUME_SHAPE, row, "fwdbwd_per_voxel_x_image", "<=", 2.0),
        ]
    return targets


TARGETS: tuple[Target, ...] = (
    *_gpu_targets(),
    *_cpu_targets(),
    *_lag_product_targets(),
    *_volume_targets(),
)


def judge(target: Target, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The target, the measured figure (None if this run has no such row and shape) and
    whether it is met (None when not measured)."""
    measured = None
    for res in results:
        if res["row"] == target.row and tuple(res["shape"]) == target.shape:
            value = res.get(target.figure)
            measured = value if isinstance(value, (int, float)) else None
    met = None if measured is None else _COMPARISONS[target.comparison](measured, target.bound)
    return {
        "issue": target.issue,
        "target": target.describe(),
        "row": target.row,
        "shape": list(target.shape),
        "figure": target.figure,
        "comparison": target.comparison,
        "bound": target.bound,
        "measured": measured,
        "met": met,
    }


def judge_all(results: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """Every target of ``device``, judged on ``results``."""
    return [judge(t, results) for t in TARGETS if t.device == device]
