"""Writes ``parity_tests/fixtures/*.npz`` from the NumPy reference.

Run as ``python -m parity_tests.make_fixtures``.

Deterministic: every case draws from its own seeded generator, so the files are reproducible and
adding a case never changes the others.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity_tests import reference
from parity_tests.fixtures import FIXTURE_DIR, Fixture, save_fixture

# Central differences are exact enough (~1e-9 relative) and cheap below this many elements.
FD_MAX_ELEMENTS = 2000


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int, int] = (2, 2, 20, 20)
    inputs: str = "random_logits"
    options: dict[str, Any] = field(default_factory=dict)
    finite_differences: bool = False


# Recipes whose prediction is an exact function of the (binary) target: the joint Gram matrix is
# singular but for eps there, which is where float32 gradients lose accuracy (tolerances.py).
DEGENERATE_INPUTS = {"near_perfect", "exact_target", "all_constant"}


def make_inputs(kind: str, shape: tuple[int, ...], rng: np.random.Generator):
    """(pred, target, with_logits) for one named input recipe."""
    binary = (rng.random(shape) < 0.5).astype(np.float64)
    recipes: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, bool]]] = {
        "random_logits": lambda: (2.0 * rng.standard_normal(shape), binary, True),
        "random_probabilities": lambda: (rng.uniform(0.05, 0.95, shape), binary, False),
        "soft_targets": lambda: (2.0 * rng.standard_normal(shape), rng.random(shape), True),
        "soft_probabilities": lambda: (rng.uniform(0.02, 0.98, shape), rng.random(shape), False),
        "large_logits": lambda: (30.0 * rng.standard_normal(shape), binary, True),
        "near_perfect": lambda: (0.98 * binary + 0.01, binary, False),
        "exact_target": lambda: (binary.copy(), binary, False),
        "saturated_probabilities": lambda: (
            np.where(rng.random(shape) < 0.3, binary, rng.uniform(0.0, 1.0, shape)),
            binary,
            False,
        ),
        "constant_prediction": lambda: (np.full(shape, 0.3), binary, False),
        "all_constant": lambda: (np.full(shape, 0.7), np.ones(shape), False),
        "correlated_logits": lambda: (
            4.0 * (binary - 0.5) + rng.standard_normal(shape),
            binary,
            True,
        ),
    }
    return recipes[kind]()


CASES = [
    Case("default-logits", finite_differences=True),
    Case("probabilities", inputs="random_probabilities", finite_differences=True),
    Case("radius1", options={"radius": 1}, finite_differences=True),
    Case("radius2", options={"radius": 2}, finite_differences=True),
    Case("radius4", shape=(2, 2, 24, 24), options={"radius": 4}),
    Case("bce-weight0", options={"bce_weight": 0.0}, finite_differences=True),
    Case("bce-weight1", options={"bce_weight": 1.0}, finite_differences=True),
    Case("avg", options={"downsampling_method": "avg"}, finite_differences=True),
    Case(
        "region-extraction",
        options={"downsampling_method": "region-extraction"},
        finite_differences=True,
    ),
    Case("stride1", shape=(2, 2, 12, 12), options={"stride": 1}, finite_differences=True),
    Case("stride2", options={"stride": 2}),
    Case("stride4", shape=(2, 2, 28, 28), options={"stride": 4}),
    Case("plain-logdet", options={"use_log_trace": False}, finite_differences=True),
    Case("epsilon1e-2", options={"epsilon": 1e-2}),
    Case("odd-33x29", shape=(2, 2, 33, 29)),
    Case(
        "odd-33x29-avg-stride2",
        shape=(1, 2, 33, 29),
        options={"downsampling_method": "avg", "stride": 2},
    ),
    Case(
        "odd-33x29-region-stride4",
        shape=(2, 1, 33, 29),
        options={"downsampling_method": "region-extraction", "stride": 4, "radius": 2},
    ),
    Case("n1", shape=(1, 3, 20, 20)),
    Case("c1", shape=(3, 1, 20, 20), finite_differences=True),
    Case("soft-targets", inputs="soft_targets", finite_differences=True),
    Case(
        "soft-targets-probabilities-avg",
        inputs="soft_probabilities",
        options={"downsampling_method": "avg"},
    ),
    Case("large-logits", inputs="large_logits"),
    Case("correlated-logits", inputs="correlated_logits", shape=(2, 3, 30, 30)),
    Case("near-perfect", inputs="near_perfect", shape=(2, 3, 30, 30), options={"bce_weight": 0.0}),
    Case(
        "near-perfect-stride1",
        inputs="near_perfect",
        shape=(2, 3, 16, 16),
        options={"bce_weight": 0.0, "stride": 1},
    ),
    Case("exact-target", inputs="exact_target", shape=(2, 3, 30, 30)),
    Case(
        "exact-target-region",
        inputs="exact_target",
        shape=(2, 2, 30, 30),
        options={"downsampling_method": "region-extraction"},
    ),
    Case("saturated-probabilities", inputs="saturated_probabilities"),
    Case("constant-prediction", inputs="constant_prediction"),
    Case(
        "all-constant-closed-form",
        inputs="all_constant",
        shape=(2, 3, 18, 18),
        options={"bce_weight": 0.0},
    ),
    Case("all-constant-bce", inputs="all_constant", shape=(1, 2, 18, 18)),
    Case("single-window", shape=(2, 2, 9, 9)),
    Case(
        "radius3-stride1-minimum",
        shape=(1, 2, 3, 5),
        options={"stride": 1},
        finite_differences=True,
    ),
    Case(
        "radius4-stride4-region-40",
        shape=(1, 2, 40, 40),
        options={"radius": 4, "stride": 4, "downsampling_method": "region-extraction"},
    ),
    Case(
        "avg-radius2-stride2-soft",
        inputs="soft_targets",
        shape=(2, 2, 16, 16),
        options={"radius": 2, "stride": 2, "downsampling_method": "avg"},
        finite_differences=True,
    ),
    Case(
        "max-radius1-stride4-probabilities",
        inputs="random_probabilities",
        shape=(2, 2, 16, 16),
        options={"radius": 1, "stride": 4},
    ),
    Case(
        "plain-logdet-bce0-region",
        shape=(2, 2, 24, 24),
        options={
            "use_log_trace": False,
            "bce_weight": 0.0,
            "downsampling_method": "region-extraction",
            "stride": 2,
        },
    ),
    Case("non-square-24x40", shape=(2, 2, 24, 40), options={"radius": 2}),
]


def build_fixture(case: Case) -> Fixture:
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    pred, target, with_logits = make_inputs(case.inputs, case.shape, rng)
    # float32-representable inputs: the float32 routes then see exactly the reference's inputs.
    pred, target = (x.astype(np.float32).astype(np.float64) for x in (pred, target))
    options = {"with_logits": with_logits, **case.options}
    per_example = reference.dense_rmi_per_example(pred, target, **options)
    grad_fd = None
    if case.finite_differences:
        if pred.size > FD_MAX_ELEMENTS:
            raise ValueError(f"{case.name}: {pred.size} elements is too many for differences")
        grad_fd = reference.central_differences(
            lambda x: reference.dense_rmi_loss(x, target, **options), pred
        )
    return Fixture(
        name=f"dense-{case.name}",
        joint_condition=reference.joint_condition_number(pred, target, **options),
        degenerate=case.inputs in DEGENERATE_INPUTS,
        pred=pred,
        target=target,
        options=options,
        value=float(per_example.mean()),
        per_example=per_example,
        grad_fd=grad_fd,
    )


def main() -> None:
    FIXTURE_DIR.mkdir(exist_ok=True)
    for stale in FIXTURE_DIR.glob("dense-*.npz"):
        stale.unlink()
    for case in CASES:
        fixture = build_fixture(case)
        path = save_fixture(fixture)
        fd = "" if fixture.grad_fd is None else " +fd"
        print(f"{path.name:55s} value={fixture.value: .12g}{fd}")


if __name__ == "__main__":
    main()
