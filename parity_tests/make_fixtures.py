"""Writes ``parity_tests/fixtures/*.npz`` from the NumPy reference.

Run as ``python -m parity_tests.make_fixtures``.

Deterministic: every case draws from its own seeded generator, so the files are reproducible and
adding a case never changes the others. ``CASES`` are the dense-target cases (files
``dense-*.npz``, docs/semantics.md#dense-targets), ``LABEL_CASES`` the label-map cases (files
``labels-*.npz``, docs/semantics.md#label-maps). Volume cases (``[N, C, D, H, W]``, files
``dense-volume-*`` and ``labels-volume-*``, docs/semantics.md#volumes-and-per-axis-regions) sit
among them, so every parity test checks volumes too.
"""

from __future__ import annotations

import argparse
import fnmatch
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
    shape: tuple[int, ...] = (2, 2, 20, 20)  # [N, C, H, W] or [N, C, D, H, W]
    inputs: str = "random_logits"
    options: dict[str, Any] = field(default_factory=dict)
    finite_differences: bool = False
    mask: str | None = None  # a MASKS recipe for ``valid_mask``, or None for no mask


# Recipes whose prediction is an exact function of the (binary) target: the joint Gram matrix is
# singular but for eps there, which is where float32 gradients lose accuracy (tolerances.py).
DEGENERATE_INPUTS = {"near_perfect", "exact_target", "all_constant", "zero_one_pair"}


def make_inputs(kind: str, shape: tuple[int, ...], rng: np.random.Generator):
    """(pred, target, with_logits) for one named input recipe."""
    binary = (rng.random(shape) < 0.5).astype(np.float64)
    recipes: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, bool]]] = {
        "random_logits": lambda: (2.0 * rng.standard_normal(shape), binary, True),
        "random_probabilities": lambda: (rng.uniform(0.05, 0.95, shape), binary, False),
        "soft_targets": lambda: (2.0 * rng.standard_normal(shape), rng.random(shape), True),
        "coarse_targets": lambda: (
            2.0 * rng.standard_normal(shape),
            coarse_binary(shape, rng),
            True,
        ),
        "soft_probabilities": lambda: (rng.uniform(0.02, 0.98, shape), rng.random(shape), False),
        "large_logits": lambda: (30.0 * rng.standard_normal(shape), binary, True),
        "near_perfect": lambda: (0.98 * binary + 0.01, binary, False),
        "exact_target": lambda: (binary.copy(), binary, False),
        "saturated_probabilities": lambda: (
            np.where(rng.random(shape) < 0.3, binary, rng.uniform(0.0, 1.0, shape)),
            binary,
            False,
        ),
        "saturated_unique_maxima": lambda: saturated_unique_maxima(shape, rng),
        "zero_one_pair": lambda: (np.array([0.0, 1.0]).reshape(shape),) * 2 + (False,),
        "constant_prediction": lambda: (np.full(shape, 0.3), binary, False),
        "all_constant": lambda: (np.full(shape, 0.7), np.ones(shape), False),
        "correlated_logits": lambda: (
            4.0 * (binary - 0.5) + rng.standard_normal(shape),
            binary,
            True,
        ),
    }
    return recipes[kind]()


def coarse_binary(shape: tuple[int, ...], rng: np.random.Generator, block: int = 5) -> np.ndarray:
    """A binary target drawn on ``block``-pixel squares, like real segments. Max pooling by 3
    turns a per-pixel coin flip into an all-ones map (each window holds a 1 with probability
    1 - 2**-9), which leaves the RMI term constant with a zero gradient."""
    n, c, *spatial = shape
    coarse = rng.random((n, c, *(-(-size // block) for size in spatial))) < 0.5
    blocks = np.kron(coarse, np.ones((block,) * len(spatial)))
    return blocks[(Ellipsis, *(slice(0, size) for size in spatial))].astype(np.float64)


def saturated_unique_maxima(shape: tuple[int, ...], rng: np.random.Generator):
    """Probabilities exactly 0 and 1 among interior ones, with finite differences in mind.

    About 30% zeros anywhere, and ones only on every third row and column (positions that are
    0 mod 3): with max pooling by 3 (padding 1) each pooling window then holds at most one 1
    and never a tie at its maximum, so the reference's central differences are the gradient
    the loss defines (the first maximum's) even at saturated values.
    """
    n, c, h, w = shape
    pred = rng.uniform(0.05, 0.95, shape)
    pred = np.where(rng.random(shape) < 0.3, 0.0, pred)
    lattice = (np.arange(h)[:, None] % 3 == 0) & (np.arange(w)[None, :] % 3 == 0)
    pred = np.where(lattice & (rng.random(shape) < 0.5), 1.0, pred)
    return pred, (rng.random(shape) < 0.5).astype(np.float64), False


def blocks_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """``[N, *spatial]``: example 0 loses a band on the right, the others a rectangle (a box in
    the first half of the slices of a volume) and the bottom rows (padding- and
    unlabelled-region-like), placed relative to the size."""
    n, _, *spatial = shape
    h, w = spatial[-2:]
    depth = (slice(0, max(1, spatial[0] // 2)),) if len(spatial) == 3 else ()
    valid = np.ones((n, *spatial), bool)
    box = (slice(int(0.15 * h), int(0.3 * h)), slice(int(0.1 * w), int(0.4 * w)))
    valid[0, ..., int(0.7 * w) :] = False
    valid[(slice(1, None), *depth, *box)] = False
    valid[1:, ..., int(0.8 * h) :, :] = False
    return valid


# valid_mask recipes. Few masked pixels suffice at stride 1; pooled maps need blocks, or
# every window would touch a masked pixel.
MASKS: dict[str, Callable[[tuple[int, ...], np.random.Generator], np.ndarray]] = {
    "blocks": blocks_mask,
    "sparse": lambda shape, rng: rng.random((shape[0], *shape[2:])) >= 0.03,
    "all_valid": lambda shape, rng: np.ones((shape[0], *shape[2:]), bool),
}


def scramble_masked(pred, target, valid, with_logits: bool, rng: np.random.Generator):
    """Wild values at masked pixels (huge logits, extreme probabilities, targets outside
    [0, 1]): a masked pixel's values must not matter."""
    masked = ~valid[:, None]
    wild_pred = 40.0 * np.sign(rng.standard_normal(pred.shape)) if with_logits else 1 - 2**-10
    return np.where(masked, wild_pred, pred), np.where(masked, 3.0, target)


CASES = [
    Case("default-logits", finite_differences=True),
    Case("probabilities", inputs="random_probabilities", finite_differences=True),
    Case("radius1", options={"radius": 1}, finite_differences=True),
    Case("radius2", options={"radius": 2}, finite_differences=True),
    Case("radius4", shape=(2, 2, 24, 24), options={"radius": 4}),
    Case(
        "bce-weight0",
        inputs="coarse_targets",
        options={"bce_weight": 0.0},
        finite_differences=True,
    ),
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
    # Probabilities exactly 0 and 1: their gradient is the unclipped function's (the clip to
    # [0, 1] passes it at its bounds), for every downsampling. bce_weight 0: the BCE of a
    # probability has no central difference at 0 or 1 (log of a negative number).
    *(
        Case(
            f"saturated-{name}",
            inputs="saturated_unique_maxima",
            shape=shape,
            options={"bce_weight": 0.0, **options},
            finite_differences=True,
        )
        for name, shape, options in (
            ("max", (2, 2, 18, 18), {}),
            ("avg", (2, 2, 16, 16), {"downsampling_method": "avg", "stride": 2}),
            ("region", (2, 2, 18, 18), {"downsampling_method": "region-extraction"}),
            ("stride1", (2, 2, 9, 9), {"stride": 1}),
        )
    ),
    Case(
        "saturated-pixel-pair",
        inputs="zero_one_pair",
        shape=(1, 1, 1, 2),
        options={"radius": 1, "stride": 1, "bce_weight": 0.0, "use_log_trace": False},
        finite_differences=True,
    ),
    Case("large-logits-fd", inputs="large_logits", finite_differences=True),
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
    Case("mask-blocks", mask="blocks", finite_differences=True),
    Case(
        "mask-blocks-probabilities-avg",
        inputs="random_probabilities",
        mask="blocks",
        options={"downsampling_method": "avg", "stride": 2},
        finite_differences=True,
    ),
    Case(
        "mask-blocks-region-extraction",
        mask="blocks",
        options={"downsampling_method": "region-extraction", "stride": 2},
        finite_differences=True,
    ),
    Case(
        "mask-sparse-stride1",
        shape=(2, 2, 12, 12),
        mask="sparse",
        options={"stride": 1},
        finite_differences=True,
    ),
    Case("mask-blocks-odd-33x29-soft", shape=(2, 3, 33, 29), inputs="soft_targets", mask="blocks"),
    Case(
        "mask-blocks-bce0-plain-logdet",
        mask="blocks",
        options={"bce_weight": 0.0, "use_log_trace": False},
        finite_differences=True,
    ),
    Case("mask-blocks-bce1", mask="blocks", options={"bce_weight": 1.0}, finite_differences=True),
    Case("mask-all-valid", mask="all_valid"),
    # Volumes [N, C, D, H, W]: cubic and anisotropic (thick-slice) regions, every downsampling,
    # masks, and the hard near-perfect cases at stride 1 (3x3x3 regions: 54x54 joint matrices)
    # and stride 3.
    Case(
        "volume-radius2-stride2",
        shape=(1, 2, 8, 8, 8),
        options={"radius": 2, "stride": 2},
        finite_differences=True,
    ),
    Case(
        "volume-anisotropic-133",
        shape=(1, 2, 4, 15, 15),
        options={"radius": [1, 3, 3], "stride": [1, 3, 3]},
        finite_differences=True,
    ),
    Case(
        "volume-avg-soft",
        shape=(1, 2, 8, 8, 8),
        inputs="soft_targets",
        options={"radius": 2, "stride": 2, "downsampling_method": "avg"},
        finite_differences=True,
    ),
    Case(
        "volume-region-extraction-probabilities",
        shape=(1, 2, 8, 9, 9),
        inputs="random_probabilities",
        options={"radius": 2, "stride": 2, "downsampling_method": "region-extraction"},
        finite_differences=True,
    ),
    Case(
        "volume-mask-blocks",
        shape=(2, 1, 8, 10, 10),
        mask="blocks",
        options={"radius": 2, "stride": 2},
        finite_differences=True,
    ),
    Case(
        "volume-mask-sparse-anisotropic-avg",
        shape=(2, 2, 6, 14, 13),
        mask="sparse",
        options={"radius": [2, 3, 3], "stride": 1, "downsampling_method": "avg"},
    ),
    Case("volume-defaults-odd", shape=(2, 2, 15, 17, 16)),
    Case(
        "volume-near-perfect-stride1",
        inputs="near_perfect",
        shape=(1, 2, 6, 8, 8),
        options={"bce_weight": 0.0, "stride": 1},
    ),
    Case(
        "volume-near-perfect-stride3",
        inputs="near_perfect",
        shape=(1, 2, 18, 24, 24),
        options={"bce_weight": 0.0},
    ),
]


def build_fixture(case: Case) -> Fixture:
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    pred, target, with_logits = make_inputs(case.inputs, case.shape, rng)
    # float32-representable inputs: the float32 routes then see exactly the reference's inputs.
    pred, target = (x.astype(np.float32).astype(np.float64) for x in (pred, target))
    options = {"with_logits": with_logits, **case.options}
    valid_mask = None
    if case.mask is not None:
        valid_mask = MASKS[case.mask](case.shape, rng)
        pred, target = scramble_masked(pred, target, valid_mask, with_logits, rng)
    per_example = reference.dense_rmi_per_example(pred, target, **options, valid_mask=valid_mask)
    if not np.isfinite(per_example).all():
        raise ValueError(f"{case.name}: the mask leaves an example without a region window")
    grad_fd = None
    if case.finite_differences:
        if pred.size > FD_MAX_ELEMENTS:
            raise ValueError(f"{case.name}: {pred.size} elements is too many for differences")
        grad_fd = reference.central_differences(
            lambda x: reference.dense_rmi_loss(x, target, **options, valid_mask=valid_mask), pred
        )
    return Fixture(
        name=f"dense-{case.name}",
        joint_condition=reference.joint_condition_number(
            pred, target, **options, valid_mask=valid_mask
        ),
        degenerate=case.inputs in DEGENERATE_INPUTS,
        pred=pred,
        target=target,
        options=options,
        value=float(per_example.mean()),
        per_example=per_example,
        grad_fd=grad_fd,
        valid_mask=valid_mask,
    )


@dataclass(frozen=True)
class LabelCase:
    """A label-map case: ``shape`` is the logits' ``[N, C, H, W]``, ``C`` the ``num_classes``.

    ``ignored`` and ``out_of_range`` are the fractions of pixels relabelled ``ignore_index``
    (255 unless the options say otherwise) and ``C`` or more.
    """

    name: str
    shape: tuple[int, ...] = (2, 3, 18, 18)  # [N, C, H, W] or [N, C, D, H, W]
    labels: str = "random"
    ignored: float = 0.1
    out_of_range: float = 0.05
    options: dict[str, Any] = field(default_factory=dict)
    finite_differences: bool = False
    saturated: bool = False  # logits of +-40 (sigmoid 1 in float32) instead of make_label_logits


# Central-difference step of the label cases. Their loss is O(1) but their gradients are small
# (the BCE is divided by the valid-pixel count), so the default 1e-6 leaves rounding noise of
# ~1e-6 relative; at 1e-5 both rounding and truncation stay below ~1e-7 (measured).
LABEL_FD_STEP = 1e-5
# Labels left valid per image by the "few_valid" recipe.
FEW_VALID_PIXELS = 5
# Side of the constant squares of the "blocks" recipe, a segmentation-like map.
BLOCK_SIDE = 5


def make_labels(case: LabelCase, rng: np.random.Generator) -> np.ndarray:
    """``[N, *spatial]`` int64 labels for ``case``, ignored pixels included."""
    n, c, *spatial = case.shape
    h = spatial[-2]
    if case.labels == "blocks":
        grid = rng.integers(0, c, (n, *(-(-size // BLOCK_SIDE) for size in spatial)))
        for axis in range(1, grid.ndim):
            grid = grid.repeat(BLOCK_SIDE, axis=axis)
        labels = grid[(slice(None), *(slice(0, size) for size in spatial))]
    else:
        labels = rng.integers(0, c, (n, *spatial))
    ignore_index = case.options.get("ignore_index", 255)
    draw = rng.random((n, *spatial))
    labels = np.where(draw < case.ignored, ignore_index, labels)
    beyond = c + rng.integers(0, 5, (n, *spatial))
    labels = np.where(
        (draw >= case.ignored) & (draw < case.ignored + case.out_of_range), beyond, labels
    )
    if case.labels == "ignored_blocks":
        # Blocks, not scattered pixels: windows free of ignored pixels must remain.
        labels = np.where(blocks_mask(case.shape, rng), labels, ignore_index)
        labels[1:, ..., int(0.8 * h) :, :] = c + 2  # out of range: ignored as well
    if case.labels in ("few_valid", "all_ignored"):
        keep = FEW_VALID_PIXELS if case.labels == "few_valid" else 0
        flat = labels.reshape(n, -1)
        order = rng.permutation(flat.shape[1])
        flat[:, order[keep:]] = ignore_index
        flat[:, order[:keep]] = rng.integers(0, c, (n, keep))
    return labels.astype(np.int64)


def make_label_logits(labels: np.ndarray, num_classes: int, rng: np.random.Generator):
    """Logits that lean towards the labels (as a trained model's do), plus noise."""
    one_hot = (labels[:, None] == class_axis(num_classes, labels.ndim - 1)).astype(np.float64)
    return 3.0 * (one_hot - 0.5) + 1.5 * rng.standard_normal(one_hot.shape)


def class_axis(num_classes: int, spatial_rank: int) -> np.ndarray:
    """The class numbers along axis 1 of an ``[N, C, *spatial]`` array."""
    return np.arange(num_classes).reshape(1, -1, *(1 for _ in range(spatial_rank)))


# Saturated label logits: this magnitude, a wrong sign on this share of the entries.
SATURATED_LOGIT = 40.0
SATURATED_WRONG_SHARE = 0.2


def saturated_label_logits(labels: np.ndarray, num_classes: int, rng: np.random.Generator):
    """Logits whose sigmoid is exactly 1 in float32 (0 to 4e-18 below), mostly on the labels'
    side: the BCE gradient is then -+1 where wrong, and the RMI term's nearly 0 everywhere."""
    one_hot = labels[:, None] == class_axis(num_classes, labels.ndim - 1)
    wrong = rng.random(one_hot.shape) < SATURATED_WRONG_SHARE
    return np.where(one_hot ^ wrong, SATURATED_LOGIT, -SATURATED_LOGIT)


LABEL_CASES = [
    LabelCase("default", finite_differences=True),
    LabelCase("avg", options={"rmi_pool_way": 1}, finite_differences=True),
    LabelCase("interp", options={"rmi_pool_way": 2}, finite_differences=True),
    LabelCase(
        "pool1",
        shape=(2, 2, 10, 10),
        options={"rmi_pool_size": 1, "rmi_pool_stride": 1},
        finite_differences=True,
    ),
    LabelCase(
        "max-pool2", shape=(2, 3, 20, 20), options={"rmi_pool_size": 2, "rmi_pool_stride": 2}
    ),
    LabelCase(
        "interp-pool2",
        shape=(2, 2, 16, 16),
        options={"rmi_pool_way": 2, "rmi_pool_size": 2, "rmi_pool_stride": 2},
        finite_differences=True,
    ),
    LabelCase(
        "max-pool4", shape=(2, 3, 28, 28), options={"rmi_pool_size": 4, "rmi_pool_stride": 4}
    ),
    LabelCase(
        "authors-avg-pool4",
        shape=(2, 4, 48, 40),
        labels="blocks",
        options={"rmi_pool_way": 1, "rmi_pool_size": 4, "rmi_pool_stride": 4},
    ),
    LabelCase(
        "interp-pool4-odd-33x29",
        shape=(2, 3, 33, 29),
        options={"rmi_pool_way": 2, "rmi_pool_size": 4, "rmi_pool_stride": 4, "rmi_radius": 2},
    ),
    LabelCase("saturated", saturated=True, finite_differences=True),
    LabelCase("radius1", options={"rmi_radius": 1}, finite_differences=True),
    LabelCase("radius2", options={"rmi_radius": 2}, finite_differences=True),
    LabelCase("radius4", shape=(2, 2, 36, 36), options={"rmi_radius": 4}),
    LabelCase("lambda-way0", options={"lambda_way": 0}, finite_differences=True),
    LabelCase("lambda-way0-lambda0", options={"lambda_way": 0, "loss_weight_lambda": 0.0}),
    LabelCase("lambda0", options={"loss_weight_lambda": 0.0}, finite_differences=True),
    LabelCase("lambda1", options={"loss_weight_lambda": 1.0}, finite_differences=True),
    LabelCase("none-ignored", ignored=0.0, out_of_range=0.0),
    LabelCase("many-ignored", shape=(2, 3, 24, 24), ignored=0.4, out_of_range=0.2),
    LabelCase("few-valid", shape=(2, 3, 20, 20), labels="few_valid"),
    LabelCase("all-ignored", shape=(2, 3, 12, 12), labels="all_ignored"),
    LabelCase("n1", shape=(1, 3, 20, 20)),
    LabelCase("c1", shape=(2, 1, 18, 18), finite_differences=True),
    LabelCase("odd-33x29", shape=(2, 3, 33, 29)),
    LabelCase(
        "odd-33x29-avg-pool2",
        shape=(1, 2, 33, 29),
        options={"rmi_pool_way": 1, "rmi_pool_size": 2, "rmi_pool_stride": 2},
    ),
    LabelCase("ignore-index-in-range", options={"ignore_index": 1}),
    LabelCase("blocks-interp", shape=(2, 4, 40, 40), labels="blocks", options={"rmi_pool_way": 2}),
    LabelCase(
        "exclude-ignored",
        labels="ignored_blocks",
        ignored=0.0,
        out_of_range=0.0,
        options={"exclude_ignored": True},
        finite_differences=True,
    ),
    LabelCase(
        "exclude-ignored-authors-avg-pool4",
        shape=(2, 4, 48, 40),
        labels="ignored_blocks",
        ignored=0.0,
        out_of_range=0.0,
        options={
            "exclude_ignored": True,
            "rmi_pool_way": 1,
            "rmi_pool_size": 4,
            "rmi_pool_stride": 4,
        },
    ),
    LabelCase(
        "exclude-ignored-interp",
        labels="ignored_blocks",
        ignored=0.0,
        out_of_range=0.0,
        options={"exclude_ignored": True, "rmi_pool_way": 2},
        finite_differences=True,
    ),
    LabelCase(
        "exclude-ignored-interp-pool4-odd-33x29",
        shape=(2, 3, 33, 29),
        labels="ignored_blocks",
        ignored=0.0,
        out_of_range=0.0,
        options={
            "exclude_ignored": True,
            "rmi_pool_way": 2,
            "rmi_pool_size": 4,
            "rmi_pool_stride": 4,
            "rmi_radius": 2,
        },
    ),
    LabelCase(
        "exclude-ignored-pool1",
        shape=(2, 2, 10, 10),
        ignored=0.03,
        out_of_range=0.0,
        options={"exclude_ignored": True, "rmi_pool_size": 1, "rmi_pool_stride": 1},
        finite_differences=True,
    ),
    LabelCase(
        "exclude-ignored-none-ignored",
        ignored=0.0,
        out_of_range=0.0,
        options={"exclude_ignored": True},
    ),
    # Scattered ignored pixels (about 1 in 100), every pool way and size 2-4: the validity of a
    # pooled or resized cell then depends on pixels all over the map, not on one strip.
    *(
        LabelCase(
            f"exclude-ignored-scattered-way{way}-pool{size}",
            shape=(2, 4, 41, 37),
            ignored=0.008,
            out_of_range=0.002,
            options={
                "exclude_ignored": True,
                "rmi_pool_way": way,
                "rmi_pool_size": size,
                "rmi_pool_stride": size,
            },
        )
        for way in (0, 1, 2)
        for size in (2, 3, 4)
    ),
    # Label volumes [N, D, H, W]: every pool way (2 is a trilinear resize), anisotropic regions
    # and pooling, scattered ignored voxels left in or excluded.
    LabelCase(
        "volume-anisotropic-133",
        shape=(1, 2, 4, 15, 15),
        labels="blocks",
        options={"rmi_radius": [1, 3, 3], "rmi_pool_size": [1, 3, 3], "rmi_pool_stride": [1, 3, 3]},
        finite_differences=True,
    ),
    LabelCase(
        "volume-avg-pool2",
        shape=(1, 2, 8, 8, 8),
        options={"rmi_pool_way": 1, "rmi_radius": 2, "rmi_pool_size": 2, "rmi_pool_stride": 2},
        finite_differences=True,
    ),
    LabelCase(
        "volume-interp-pool2",
        shape=(1, 2, 8, 10, 10),
        options={"rmi_pool_way": 2, "rmi_radius": 2, "rmi_pool_size": 2, "rmi_pool_stride": 2},
        finite_differences=True,
    ),
    LabelCase(
        "volume-interp-anisotropic-odd",
        shape=(2, 2, 5, 33, 29),
        options={
            "rmi_pool_way": 2,
            "rmi_radius": [1, 3, 3],
            "rmi_pool_size": [1, 4, 4],
            "rmi_pool_stride": [1, 4, 4],
        },
    ),
    *(
        LabelCase(
            f"volume-exclude-ignored-scattered-way{way}",
            shape=(2, 3, 10, 14, 14),
            ignored=0.004,
            out_of_range=0.001,
            options={
                "exclude_ignored": True,
                "rmi_pool_way": way,
                "rmi_radius": 2,
                "rmi_pool_size": 2,
                "rmi_pool_stride": 2,
            },
        )
        for way in (0, 1, 2)
    ),
]


def build_label_fixture(case: LabelCase) -> Fixture:
    name = f"labels-{case.name}"
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    num_classes = case.shape[1]
    labels = make_labels(case, rng)
    # float32-representable logits: the float32 routes then see exactly the reference's inputs.
    make_logits = saturated_label_logits if case.saturated else make_label_logits
    logits = make_logits(labels, num_classes, rng).astype(np.float32).astype(np.float64)
    options = {"num_classes": num_classes, **case.options}
    value = reference.label_rmi_loss(logits, labels, **options)
    grad_fd = None
    if case.finite_differences:
        if logits.size > FD_MAX_ELEMENTS:
            raise ValueError(f"{case.name}: {logits.size} elements is too many for differences")
        grad_fd = reference.central_differences(
            lambda x: reference.label_rmi_loss(x, labels, **options), logits, LABEL_FD_STEP
        )
    valid, target = reference.label_targets(labels, num_classes, options.get("ignore_index", 255))
    p_regions, y_regions = reference.label_regions(
        logits,
        valid,
        target,
        rmi_radius=options.get("rmi_radius", 3),
        rmi_pool_way=options.get("rmi_pool_way", 0),
        rmi_pool_stride=options.get("rmi_pool_stride", 3),
    )
    return Fixture(
        name=name,
        pred=logits,
        target=labels,
        options=options,
        value=value,
        # The label-map loss is one number for the batch (docs/semantics.md#label-maps, step 3):
        # no per-example split.
        per_example=np.zeros(0),
        joint_condition=reference.joint_condition_of_regions(
            p_regions, y_regions, reference.LABEL_EPSILON
        ),
        grad_fd=grad_fd,
    )


def write(fixtures, stale: str) -> None:
    """Write ``fixtures``, after removing the files matching ``stale`` (none if empty), one line
    of summary each."""
    for path in FIXTURE_DIR.glob(stale) if stale else ():
        path.unlink()
    for fixture in fixtures:
        path = save_fixture(fixture)
        fd = "" if fixture.grad_fd is None else " +fd"
        print(f"{path.name:55s} value={fixture.value: .12g}{fd}")


def main(argv: list[str] | None = None) -> None:
    """Every fixture, or (``python -m parity_tests.make_fixtures PATTERN``) only those whose file
    name matches the glob ``PATTERN``, e.g. ``"*-volume-*"`` after adding volume cases."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default="*", help="file names to (re)write")
    pattern = parser.parse_args(argv).pattern
    FIXTURE_DIR.mkdir(exist_ok=True)
    for prefix, cases, build in (
        ("dense", CASES, build_fixture),
        ("labels", LABEL_CASES, build_label_fixture),
    ):
        chosen = [c for c in cases if fnmatch.fnmatch(f"{prefix}-{c.name}.npz", pattern)]
        write(map(build, chosen), f"{prefix}-*.npz" if pattern == "*" else "")


if __name__ == "__main__":
    main()
