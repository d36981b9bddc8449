"""The loss called the ways users call it: memory layouts and strided views (PyTorch), every class
axis (JAX), non-finite and slightly out-of-range input, empty maps and tiny ridges, in both
backends and both APIs.

The semantics these tests hold the backends to are in docs/semantics.md ("Odd input").
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rmi_jax
import rmi_torch
from parity_tests import reference
from parity_tests.backends import TORCH_LAYOUTS, torch_layout
from parity_tests.tolerances import (
    F32_SAME_MATH_ATOL,
    F32_SAME_MATH_RTOL,
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    F64_SAME_MATH_RTOL,
    relative_error,
)
from rmi_core.geometry import dense_window_grid
from rmi_core.numerics import minimum_epsilon

SHAPE = (2, 3, 25, 22)  # NCHW; odd sizes so that pooling pads
RNG = np.random.default_rng(11)
LOGITS = RNG.standard_normal(SHAPE)
TARGET = (RNG.random(SHAPE) < 0.4).astype(np.float64)
LABELS = RNG.integers(0, SHAPE[1], (SHAPE[0], *SHAPE[2:]))
LABELS[RNG.random(LABELS.shape) < 0.05] = 255
# A mask with a masked block in one example and a masked strip in the other.
MASK = np.ones((SHAPE[0], *SHAPE[2:]), bool)
MASK[0, 4:10, 3:9] = False
MASK[1, :, -4:] = False


def torch_value_and_grad(x: torch.Tensor, loss) -> tuple[float, torch.Tensor]:
    x = x.detach().requires_grad_()
    value = loss(x)
    value.backward()
    return float(value.detach()), x.grad


DENSE_OPTIONS = [
    {"with_logits": with_logits, "downsampling_method": method, "stride": stride, "bce_weight": w}
    for with_logits, method, stride, w in itertools.product(
        [True, False], ["max", "avg", "region-extraction"], [1, 3], [0.0, 0.5, 1.0]
    )
    if not (stride == 1 and method != "max")  # stride 1 pools nothing: one method suffices
]
# The default tier: each downsampling route with and without a mask, the BCE term's inputs and
# weights varied among them (the layout reaches the backward through the route); the other
# combinations are in the full tier.
DEFAULT_LAYOUT_CASES = [
    ("max", 1, False, True, 0.5),
    ("max", 1, True, False, 0.0),
    ("max", 3, False, False, 1.0),
    ("max", 3, True, True, 0.5),
    ("avg", 3, False, True, 0.0),
    ("avg", 3, True, False, 0.5),
    ("region-extraction", 3, False, False, 0.5),
    ("region-extraction", 3, True, True, 1.0),
]
LAYOUT_CASES = [
    pytest.param(
        options,
        masked,
        id=f"{options}-{'masked' if masked else 'plain'}",
        marks=()
        if (
            options["downsampling_method"],
            options["stride"],
            masked,
            options["with_logits"],
            options["bce_weight"],
        )
        in DEFAULT_LAYOUT_CASES
        else pytest.mark.full,
    )
    for masked in (False, True)
    for options in DENSE_OPTIONS
]


@pytest.mark.parametrize("options, masked", LAYOUT_CASES)
def test_torch_dense_loss_is_the_same_in_every_layout(options, masked) -> None:
    pred = torch.tensor(LOGITS if options["with_logits"] else 1 / (1 + np.exp(-LOGITS)))
    target = torch.tensor(TARGET)
    mask = torch.tensor(MASK) if masked else None

    def loss(x):
        return rmi_torch.rmi_loss(x, target, valid_mask=mask, **options)

    expected_value, expected_grad = torch_value_and_grad(pred, loss)
    for name in TORCH_LAYOUTS:
        value, grad = torch_value_and_grad(torch_layout(pred, name), loss)
        assert value == pytest.approx(expected_value, rel=F64_SAME_MATH_RTOL), name
        assert relative_error(grad, expected_grad) < F64_SAME_MATH_RTOL, name


@pytest.mark.parametrize("pool_way", [0, 1, 2])
def test_torch_label_loss_is_the_same_in_every_layout(pool_way) -> None:
    labels = torch.tensor(LABELS)

    def loss(x):
        return rmi_torch.rmi_loss_from_labels(
            x, labels, num_classes=SHAPE[1], rmi_pool_way=pool_way
        )

    expected_value, expected_grad = torch_value_and_grad(torch.tensor(LOGITS), loss)
    for name in TORCH_LAYOUTS:
        value, grad = torch_value_and_grad(torch_layout(torch.tensor(LOGITS), name), loss)
        assert value == pytest.approx(expected_value, rel=F64_SAME_MATH_RTOL), name
        assert relative_error(grad, expected_grad) < F64_SAME_MATH_RTOL, name


def test_torch_channels_last_gradient_stays_channels_last() -> None:
    # The backward adds the pooled gradient in the input's own layout: no layout copy.
    x = torch.tensor(LOGITS, dtype=torch.float32).to(memory_format=torch.channels_last)
    x.requires_grad_()
    rmi_torch.RMILoss(with_logits=True)(x, torch.tensor(TARGET, dtype=torch.float32)).backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


# Every class axis but the batch's: where the classes go in the array (NCHW order listed). Each
# costs a compilation: 3, -2 and -3 are in the full tier (tests/test_properties.py draws from all).
CHANNEL_AXES = [1, 2, -1, *(pytest.param(axis, marks=pytest.mark.full) for axis in (3, -2, -3))]


def _to_axis(nchw: np.ndarray, channel_axis: int) -> np.ndarray:
    return np.moveaxis(nchw, 1, channel_axis)


@functools.cache
def _jax_dense_value_and_grad(channel_axis: int):
    """Value and gradient (classes on ``channel_axis``) of the masked dense loss, jitted, once per
    axis: the NCHW one serves every test below."""

    def loss(p, target):
        return rmi_jax.rmi_loss(
            p, target, with_logits=True, channel_axis=channel_axis, valid_mask=jnp.asarray(MASK)
        )

    pred = jnp.asarray(_to_axis(LOGITS, channel_axis), jnp.float32)
    return jax.jit(jax.value_and_grad(loss))(pred, jnp.asarray(_to_axis(TARGET, channel_axis)))


@functools.cache
def _jax_label_value_and_grad(channel_axis: int):
    """The label-map loss's value and gradient, likewise."""

    def loss(logits, labels):
        return rmi_jax.rmi_loss_from_labels(
            logits, labels, num_classes=SHAPE[1], channel_axis=channel_axis
        )

    logits = jnp.asarray(_to_axis(LOGITS, channel_axis), jnp.float32)
    return jax.jit(jax.value_and_grad(loss))(logits, jnp.asarray(LABELS))


@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
def test_jax_every_channel_axis_gives_the_nchw_loss(channel_axis) -> None:
    mask = MASK
    expected = _jax_dense_value_and_grad(1)
    value, grad = _jax_dense_value_and_grad(channel_axis)
    np.testing.assert_allclose(value, expected[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL)
    grad = np.moveaxis(np.asarray(grad), channel_axis, 1)
    assert relative_error(grad, expected[1]) < F32_SAME_MATH_RTOL
    # ...and it is the reference's loss.
    expected_value = reference.dense_rmi_loss(LOGITS, TARGET, with_logits=True, valid_mask=mask)
    np.testing.assert_allclose(value, expected_value, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)


@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
def test_jax_every_channel_axis_gives_the_nchw_label_loss(channel_axis) -> None:
    expected = _jax_label_value_and_grad(1)
    value, grad = _jax_label_value_and_grad(channel_axis)
    np.testing.assert_allclose(value, expected[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL)
    grad = np.moveaxis(np.asarray(grad), channel_axis, 1)
    assert relative_error(grad, expected[1]) < F32_SAME_MATH_RTOL


# --- Non-finite input: the loss is NaN, nothing raises -----------------------------------------


def _poisoned(value: float, where: str, with_logits: bool):
    pred = LOGITS.copy() if with_logits else 1 / (1 + np.exp(-LOGITS))
    target = TARGET.copy()
    (pred if where == "pred" else target)[1, 2, 7, 5] = value
    return pred, target


NON_FINITE = [np.nan, np.inf, -np.inf]
DENSE_ODD = [
    {"with_logits": True, "bce_weight": 0.5},
    {"with_logits": True, "bce_weight": 0.0},
    {"with_logits": True, "bce_weight": 1.0},
    {"with_logits": False, "bce_weight": 0.5},
    {"with_logits": False, "bce_weight": 0.0},
    {"with_logits": True, "bce_weight": 0.0, "downsampling_method": "avg"},
    {"with_logits": True, "bce_weight": 0.0, "stride": 1},
]


@pytest.mark.parametrize("double", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("where", ["pred", "target"])
@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("options", DENSE_ODD, ids=str)
def test_torch_non_finite_input_gives_nan(options, bad, where, double) -> None:
    pred, target = _poisoned(bad, where, options["with_logits"])
    dtype = torch.float64 if double else torch.float32
    x = torch.tensor(pred, dtype=dtype, requires_grad=True)
    value = rmi_torch.rmi_loss(
        x, torch.tensor(target, dtype=dtype), use_double_precision=double, **options
    )
    assert torch.isnan(value)
    value.backward()  # no exception from the backward either
    if where == "pred" and np.isnan(bad):
        assert torch.isnan(x.grad).any()


@functools.cache
def _jitted_value_and_grad(options: tuple):
    """jit(value_and_grad) of the NCHW dense loss w.r.t. the prediction, one per option set (the
    poisoned inputs are arguments, so each option set compiles once)."""

    def loss(pred, target):
        return rmi_jax.rmi_loss(pred, target, channel_axis=1, **dict(options))

    return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("where", ["pred", "target"])
@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("options", DENSE_ODD, ids=str)
def test_jax_non_finite_input_gives_nan(options, bad, where) -> None:
    pred, target = _poisoned(bad, where, options["with_logits"])
    value_and_grad = _jitted_value_and_grad(tuple(sorted(options.items())))
    value, grad = value_and_grad(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32))
    assert np.isnan(value)
    if where == "pred" and np.isnan(bad):
        assert np.isnan(grad).any()


@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("lambda_way, weight", [(1, 0.5), (1, 0.0), (0, 0.5)])
def test_label_loss_of_non_finite_logits_is_nan(bad, lambda_way, weight) -> None:
    logits = LOGITS.copy()
    logits[0, 1, 3, 3] = bad
    options = {
        "num_classes": SHAPE[1],
        "lambda_way": lambda_way,
        "loss_weight_lambda": weight,
    }
    jax_value = rmi_jax.rmi_loss_from_labels(
        jnp.asarray(logits, jnp.float32), jnp.asarray(LABELS), channel_axis=1, **options
    )
    torch_value = rmi_torch.rmi_loss_from_labels(
        torch.tensor(logits), torch.tensor(LABELS), **options
    )
    assert np.isnan(jax_value) and torch.isnan(torch_value)


def test_masked_non_finite_values_do_not_matter() -> None:
    pred, target = _poisoned(np.nan, "pred", True)
    mask = np.ones((SHAPE[0], *SHAPE[2:]), bool)
    mask[1, 7, 5] = False
    clean = rmi_torch.rmi_loss(
        torch.tensor(LOGITS), torch.tensor(TARGET), with_logits=True, valid_mask=torch.tensor(mask)
    )
    poisoned = rmi_torch.rmi_loss(
        torch.tensor(pred), torch.tensor(target), with_logits=True, valid_mask=torch.tensor(mask)
    )
    assert float(poisoned) == float(clean)
    jax_value = rmi_jax.rmi_loss(
        jnp.asarray(pred, jnp.float32),
        jnp.asarray(target, jnp.float32),
        with_logits=True,
        channel_axis=1,
        valid_mask=jnp.asarray(mask),
    )
    assert np.isfinite(jax_value)


# --- Probabilities a rounding step outside [0, 1] ------------------------------------------


@pytest.mark.parametrize("bce_weight", [0.0, 0.5, 1.0])
def test_probabilities_just_outside_the_unit_interval_are_clipped(bce_weight) -> None:
    probabilities = 1 / (1 + np.exp(-3 * LOGITS))
    outside = probabilities.copy()
    outside[probabilities > 0.9] = 1 + 1e-6  # a rounding softmax
    outside[probabilities < 0.1] = -1e-7
    clipped = np.clip(outside, 0.0, 1.0)
    options = {"with_logits": False, "bce_weight": bce_weight}
    expected = reference.dense_rmi_loss(clipped, TARGET, **options)
    for pred in (outside, clipped):
        torch_value = rmi_torch.rmi_loss(torch.tensor(pred), torch.tensor(TARGET), **options)
        jax_value = rmi_jax.rmi_loss(
            jnp.asarray(pred, jnp.float32), jnp.asarray(TARGET), channel_axis=1, **options
        )
        np.testing.assert_allclose(float(torch_value), expected, rtol=1e-10)
        np.testing.assert_allclose(jax_value, expected, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)
    # Outside the interval the gradient is zero (the clip is flat there), in both backends.
    x = torch.tensor(outside, requires_grad=True)
    rmi_torch.rmi_loss(x, torch.tensor(TARGET), **options).backward()
    jax_grad = jax.grad(
        lambda p: rmi_jax.rmi_loss(p, jnp.asarray(TARGET), channel_axis=1, **options)
    )(jnp.asarray(outside, jnp.float32))
    out = (outside > 1) | (outside < 0)
    assert (x.grad.numpy()[out] == 0).all() and (np.asarray(jax_grad)[out] == 0).all()


# --- Too small a map, too small a ridge ------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2, 0, 6), (1, 2, 6, 0)])
def test_an_empty_spatial_axis_is_rejected_with_the_minimum_size(shape) -> None:
    options = {"with_logits": True, "radius": 1, "stride": 2}
    pattern = r"spatial size .* is empty .* at least 1x1"
    with pytest.raises(ValueError, match=pattern):
        rmi_jax.rmi_loss(np.zeros(shape, np.float32), np.zeros(shape), channel_axis=1, **options)
    with pytest.raises(ValueError, match=pattern):
        rmi_torch.rmi_loss(torch.zeros(shape), torch.zeros(shape), **options)


@pytest.mark.parametrize("pool_way, size", [(0, 0), (1, 0), (2, 0), (2, 1)])
def test_label_maps_too_small_for_a_region_are_rejected(pool_way, size) -> None:
    # Resizing (way 2) to size // 2 leaves nothing of one row; pooling pads it to one cell.
    options = {
        "num_classes": 2,
        "rmi_radius": 1,
        "rmi_pool_way": pool_way,
        "rmi_pool_size": 2,
        "rmi_pool_stride": 2,
    }
    labels = np.zeros((1, size, 6), np.int64)
    with pytest.raises(ValueError, match=r"spatial size .* at least \dx\d"):
        rmi_jax.rmi_loss_from_labels(
            np.zeros((1, 2, size, 6), np.float32), labels, channel_axis=1, **options
        )
    with pytest.raises(ValueError, match=r"spatial size .* at least \dx\d"):
        rmi_torch.rmi_loss_from_labels(torch.zeros(1, 2, size, 6), torch.tensor(labels), **options)


HARD_CASES = {
    "exact-target": lambda target: target,
    "near-perfect": lambda target: 0.98 * target + 0.01,
}


def test_a_ridge_too_small_for_float32_is_rejected_and_named() -> None:
    shape = (2, 3, 48, 48)
    options = {"with_logits": False, "bce_weight": 0.0, "stride": 1, "epsilon": 1e-12}
    pattern = r"epsilon=1e-12 is below .* float32 .*use_double_precision=True"
    with pytest.raises(ValueError, match=pattern):
        rmi_jax.rmi_loss(np.zeros(shape, np.float32), np.zeros(shape), channel_axis=1, **options)
    with pytest.raises(ValueError, match=pattern):
        rmi_torch.rmi_loss(
            torch.zeros(shape), torch.zeros(shape), use_double_precision=False, **options
        )
    # float64 statistics resolve it: accepted, and the loss is finite.
    target = (RNG.random(shape) < 0.5).astype(np.float64)
    value = rmi_torch.rmi_loss(torch.tensor(target), torch.tensor(target), **options)
    assert torch.isfinite(value)


@pytest.mark.parametrize("case", sorted(HARD_CASES))
@pytest.mark.parametrize("stride, size", [(1, 48), (3, 96)])
def test_the_smallest_accepted_ridge_never_fails_in_float32(case, stride, size) -> None:
    """At the smallest accepted epsilon, the hardest inputs (the prediction an exact function of
    the target) give a finite loss and gradient in both backends: "cannot fail" holds."""
    shape = (2, 3, size, size)
    target = (RNG.random(shape) < 0.5).astype(np.float32)
    pred = HARD_CASES[case](target).astype(np.float32)
    rows, cols = dense_window_grid((size, size), (3, 3), "max", (stride, stride))
    epsilon = minimum_epsilon(9, rows * cols, float(np.finfo(np.float32).eps)) * (1 + 1e-6)
    options = {"with_logits": False, "bce_weight": 0.0, "stride": stride, "epsilon": epsilon}

    value, grad = jax.jit(
        jax.value_and_grad(lambda p, y: rmi_jax.rmi_loss(p, y, channel_axis=1, **options))
    )(jnp.asarray(pred), jnp.asarray(target))
    assert np.isfinite(value) and np.isfinite(grad).all()
    x = torch.tensor(pred, requires_grad=True)
    torch_value = rmi_torch.rmi_loss(x, torch.tensor(target), use_double_precision=False, **options)
    torch_value.backward()
    assert torch.isfinite(torch_value) and torch.isfinite(x.grad).all()
