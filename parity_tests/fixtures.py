"""The shared ``.npz`` fixtures: one loader for every test, report and benchmark."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"


@dataclass(frozen=True)
class Fixture:
    """Inputs (``[N, C, H, W]`` or, for volumes, ``[N, C, D, H, W]``; float64), options and the
    reference's answers for one case.

    ``options`` are the keyword arguments common to both backends' ``rmi_loss`` (never
    ``use_double_precision``, ``channel_axis`` or ``reduction``, which the tests choose).
    ``grad_fd`` is the central-difference gradient of the reference's mean value with respect
    to ``pred``, present on small fixtures with no ties in max pooling. ``joint_condition`` is
    the reference's condition number of the joint Gram matrix (the float32 gradients' enemy),
    and ``degenerate`` marks predictions that are an exact function of the target, where that
    matrix is singular but for ``eps``. ``valid_mask`` is the ``[N, H, W]`` boolean mask of the
    masked dense fixtures (``[N, D, H, W]`` for volumes; ``None`` elsewhere), passed to both
    backends as ``valid_mask``.

    Label-map fixtures (``labels-*.npz``, docs/semantics.md#label-maps) hold the logits in
    ``pred``, the ``[N, H, W]`` (or ``[N, D, H, W]``) int64 label map in ``target``, the keyword
    arguments of ``rmi_loss_from_labels`` in ``options`` (never ``channel_axis`` or
    ``use_double_precision``), and an empty ``per_example``: that loss is one number for the
    batch.
    """

    name: str
    pred: np.ndarray
    target: np.ndarray
    options: dict[str, Any]
    value: float
    per_example: np.ndarray
    joint_condition: float
    degenerate: bool = False
    grad_fd: np.ndarray | None = None
    valid_mask: np.ndarray | None = field(default=None)

    def __str__(self) -> str:
        return self.name

    def mask_argument(self, to_array: Callable[[np.ndarray], Any]) -> dict[str, Any]:
        """``{"valid_mask": to_array(mask)}`` for a masked dense fixture, else ``{}``."""
        return {} if self.valid_mask is None else {"valid_mask": to_array(self.valid_mask)}


def save_fixture(fixture: Fixture, directory: Path = FIXTURE_DIR) -> Path:
    arrays = {
        "pred": fixture.pred,
        "target": fixture.target,
        "value": np.float64(fixture.value),
        "per_example": fixture.per_example,
        "options_json": np.array(json.dumps(fixture.options, sort_keys=True)),
        "joint_condition": np.float64(fixture.joint_condition),
        "degenerate": np.bool_(fixture.degenerate),
    }
    if fixture.grad_fd is not None:
        arrays["grad_fd"] = fixture.grad_fd
    if fixture.valid_mask is not None:
        arrays["valid_mask"] = fixture.valid_mask
    path = directory / f"{fixture.name}.npz"
    np.savez_compressed(path, **arrays)
    return path


def load_fixture(path: Path) -> Fixture:
    with np.load(path) as data:
        return Fixture(
            name=path.stem,
            pred=data["pred"],
            target=data["target"],
            options=_tuples(json.loads(str(data["options_json"]))),
            value=float(data["value"]),
            per_example=data["per_example"],
            joint_condition=float(data["joint_condition"]),
            degenerate=bool(data["degenerate"]),
            grad_fd=data["grad_fd"] if "grad_fd" in data else None,
            valid_mask=data["valid_mask"] if "valid_mask" in data else None,
        )


def load_fixtures(pattern: str = "dense-*.npz") -> list[Fixture]:
    """Every fixture matching ``pattern``, sorted by name; fails loudly if there are none."""
    paths = sorted(FIXTURE_DIR.glob(pattern))
    if not paths:
        raise FileNotFoundError(
            f"no fixtures match {pattern!r} in {FIXTURE_DIR}; "
            "run `python -m parity_tests.make_fixtures`"
        )
    return [load_fixture(path) for path in paths]


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    """Per-axis options come back from JSON as lists; the losses take (and hash) tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
