"""Property-based tests: on any valid input, in any layout, finite values and gradients; JAX equals
PyTorch; the label-map loss with scattered ignored pixels equals the float64 reference.

Each property runs a few examples in the default tier and many in the full tier (``TIERS``).
JAX is called with the classes on a drawn ``channel_axis``, PyTorch with a drawn memory layout or
strided view, which must give the contiguous tensor's value and gradient.
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from parity_tests import reference
from parity_tests.backends import TORCH_LAYOUTS, torch_layout
from parity_tests.tolerances import (
    F32_DEGENERATE_GRAD_ROUNDING_UNITS,
    F32_SAME_MATH_ATOL,
    F32_SAME_MATH_RTOL,
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    F64_VALUE_ATOL,
    F64_VALUE_RTOL,
    FLOAT32_UNIT_ROUNDOFF,
    f32_same_math_grad_rtol,
    relative_error,
)
from rmi_core.geometry import minimum_label_input_shape
from rmi_jax import rmi_loss as jax_loss
from rmi_jax import rmi_loss_from_labels as jax_label_loss
from rmi_torch import rmi_loss as torch_loss
from rmi_torch import rmi_loss_from_labels as torch_label_loss

# Both float32 routes run the same algorithm up to BLAS reassociation: values agree to ~1e-6.
CROSS_BACKEND_F32_RTOL = 1e-4
CROSS_BACKEND_F32_ATOL = 1e-4
# Examples per property: a few in the default tier, where each costs a JAX compilation; many in
# the full tier.
DEFAULT_TIER_EXAMPLES = 5
FULL_TIER_EXAMPLES = 60
TIERS = [
    pytest.param(DEFAULT_TIER_EXAMPLES, id="default-tier"),
    pytest.param(FULL_TIER_EXAMPLES, id="full-tier", marks=pytest.mark.full),
]
# The label-map property runs once per pool way, so with fewer examples each.
LABEL_TIERS = [
    pytest.param(DEFAULT_TIER_EXAMPLES // 2, id="default-tier"),
    pytest.param(FULL_TIER_EXAMPLES // 2, id="full-tier", marks=pytest.mark.full),
]
# Every class axis JAX accepts for rank-4 inputs (axis 0 is the batch).
CHANNEL_AXES = [1, 2, 3, -1, -2, -3]


def check_examples(max_examples: int, strategy, check) -> None:
    """Run ``check`` on ``max_examples`` examples drawn from ``strategy``."""
    run = settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )(given(strategy)(check))
    run()


def cross_backend_grad_rtol(condition: float) -> float:
    """Each float32 gradient is within F32_DEGENERATE_GRAD_ROUNDING_UNITS u cond(J) of the exact
    one (parity_tests/tolerances.py), so the two backends are held to each other by twice that
    bound."""
    scaled = 2 * F32_DEGENERATE_GRAD_ROUNDING_UNITS * FLOAT32_UNIT_ROUNDOFF * condition
    return max(CROSS_BACKEND_F32_RTOL, scaled)


def same_math_grad_rtol(condition: float) -> float:
    """Two float32 gradients that differ in rounding only (a layout), at cond(J) = ``condition``."""
    return f32_same_math_grad_rtol(SimpleNamespace(joint_condition=condition))


def jax_value_and_grads(loss, *inputs, channel_axis: int):
    """Value and gradients of a jitted ``loss`` with the classes moved from axis 1 to
    ``channel_axis``; the gradients come back NCHW."""
    moved = [jnp.asarray(np.moveaxis(x, 1, channel_axis)) for x in inputs]
    argnums = tuple(range(len(inputs)))
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=argnums))(*moved)
    return float(value), [np.moveaxis(np.asarray(g), channel_axis, 1) for g in grads]


def torch_value_and_grads(loss, *inputs, layout: str, dtype=torch.float32):
    """Value and gradients of ``loss`` at ``inputs`` handed over in ``layout``."""
    leaves = [torch.tensor(x, dtype=dtype, requires_grad=True) for x in inputs]
    value = loss(*(torch_layout(x, layout) for x in leaves))
    value.backward()
    return value.item(), [x.grad.numpy() for x in leaves]


def assert_same_math(layout: tuple, contiguous: tuple, condition: float) -> None:
    """A layout's value and gradients against the contiguous call's."""
    np.testing.assert_allclose(
        layout[0], contiguous[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
    )
    for actual, expected in zip(layout[1], contiguous[1], strict=True):
        assert relative_error(actual, expected) < same_math_grad_rtol(condition)


def assert_finite(*results: tuple) -> None:
    for value, grads in results:
        assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)


# --- Dense targets -------------------------------------------------------------------------------


@st.composite
def cases(draw):
    radius = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 4))
    method = draw(st.sampled_from(["max", "avg", "region-extraction"]))
    pooled = stride > 1 and method != "region-extraction"
    minimum = radius * stride - 2 * (stride // 2) if pooled else radius
    height = draw(st.integers(max(minimum, 1), max(minimum, 1) + 12))
    width = draw(st.integers(max(minimum, 1), max(minimum, 1) + 12))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), height, width)
    with_logits = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["random", "binary", "constant", "extreme"]))
    rng = np.random.default_rng(seed)
    target = (rng.random(shape) < 0.5).astype(np.float32)
    if draw(st.booleans()):
        target = rng.random(shape).astype(np.float32)
    if with_logits:
        scale = {"random": 3.0, "binary": 0.0, "constant": 0.0, "extreme": 60.0}[kind]
        pred = scale * rng.standard_normal(shape) + (
            8.0 * (target - 0.5) if kind == "binary" else 0
        )
    else:
        pred = {
            "random": rng.uniform(0, 1, shape),
            "binary": target,
            "constant": np.full(shape, 0.5),
            "extreme": rng.choice([0.0, 1.0, 1e-30, 1 - 1e-7], shape),
        }[kind]
    options = {
        "with_logits": with_logits,
        "radius": radius,
        "stride": stride,
        "downsampling_method": method,
        "bce_weight": draw(st.sampled_from([0.0, 0.5, 1.0, 0.25])),
        "use_log_trace": draw(st.booleans()),
        "epsilon": draw(st.sampled_from([5e-4, 1e-2, 1e-6])),
    }
    if draw(st.integers(0, 2)) == 0:
        options["valid_mask"] = draw_mask(draw, rng, shape, options)
    layouts = draw(st.sampled_from(CHANNEL_AXES)), draw(st.sampled_from(TORCH_LAYOUTS))
    return pred.astype(np.float32), target.astype(np.float32), options, layouts


def draw_mask(draw, rng: np.random.Generator, shape, options) -> np.ndarray:
    """A mask with a masked rectangle and a few masked pixels, keeping a window per example."""
    n, _, h, w = shape
    mask = rng.random((n, h, w)) >= draw(st.sampled_from([0.0, 0.02]))
    top, left = rng.integers(0, h), rng.integers(0, w)
    mask[:, top : top + rng.integers(1, h + 1), left : left + rng.integers(1, w + 1)] = False
    region_options = {k: options[k] for k in ("radius", "stride", "downsampling_method")}
    zeros = np.zeros(shape)
    _, _, weights = reference.dense_regions(
        zeros, zeros, with_logits=False, valid_mask=mask, **region_options
    )
    assume(bool((weights.sum(axis=-1) > 0).all()))
    return mask


def check_dense_case(case) -> None:
    pred, target, options, (channel_axis, layout) = case
    mask = options.pop("valid_mask", None)
    jax_result = jax_value_and_grads(
        lambda p, y: jax_loss(p, y, channel_axis=channel_axis, valid_mask=mask, **options),
        pred,
        target,
        channel_axis=channel_axis,
    )
    torch_mask = None if mask is None else torch.tensor(mask)

    def loss(p, y):
        return torch_loss(p, y, use_double_precision=False, valid_mask=torch_mask, **options)

    contiguous = torch_value_and_grads(loss, pred, target, layout="contiguous")
    laid_out = torch_value_and_grads(loss, pred, target, layout=layout)
    assert_finite(jax_result, contiguous, laid_out)
    condition = reference.joint_condition_number(pred, target, **options, valid_mask=mask)
    assert_same_math(laid_out, contiguous, condition)
    np.testing.assert_allclose(
        jax_result[0], contiguous[0], rtol=CROSS_BACKEND_F32_RTOL, atol=CROSS_BACKEND_F32_ATOL
    )
    grad_jax, grad_torch = jax_result[1][0], contiguous[1][0]
    assert relative_error(grad_jax, grad_torch) < cross_backend_grad_rtol(condition)


@pytest.mark.parametrize("max_examples", TIERS)
def test_values_and_gradients_are_finite_and_backends_agree_in_any_layout(max_examples) -> None:
    check_examples(max_examples, cases(), check_dense_case)


# --- Label maps with scattered ignored pixels ------------------------------------------------


@st.composite
def label_cases(draw, pool_way: int):
    stride = draw(st.integers(2, 4))  # pool size 1 pools nothing: no pool way to test
    radius = draw(st.integers(1, 3))
    num_classes = draw(st.integers(1, 3))
    minimum = minimum_label_input_shape((radius,) * 2, pool_way, (stride,) * 2)[0]
    shape = (
        draw(st.integers(1, 2)),
        draw(st.integers(minimum, minimum + 10)),
        draw(st.integers(minimum, minimum + 10)),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    labels = rng.integers(0, num_classes, shape)
    # Ignored pixels scattered one by one, as annotation tools leave them.
    labels[rng.random(shape) < draw(st.sampled_from([0.01, 0.05, 0.15]))] = 255
    logits = 2.0 * rng.standard_normal((shape[0], num_classes, *shape[1:]))
    options = {
        "num_classes": num_classes,
        "rmi_radius": radius,
        "rmi_pool_way": pool_way,
        "rmi_pool_size": stride,
        "rmi_pool_stride": stride,
        "exclude_ignored": draw(st.booleans()),
        "lambda_way": draw(st.sampled_from([0, 1])),
        "loss_weight_lambda": draw(st.sampled_from([0.0, 0.5, 1.0])),
    }
    weights = window_weights(labels, options)
    if weights is not None:
        assume(bool((weights.sum(axis=-1) > 0).all()))
    layouts = draw(st.sampled_from(CHANNEL_AXES)), draw(st.sampled_from(TORCH_LAYOUTS))
    return logits, labels, options, layouts


def window_weights(labels: np.ndarray, options: dict) -> np.ndarray | None:
    """The reference's ``[N, 1, L]`` window weights under ``exclude_ignored``, else ``None``."""
    if not options["exclude_ignored"]:
        return None
    valid, _ = reference.label_targets(labels, options["num_classes"], 255)
    return reference.label_window_weights(
        valid, **{k: options[k] for k in ("rmi_radius", "rmi_pool_way", "rmi_pool_stride")}
    )


def label_condition(logits: np.ndarray, labels: np.ndarray, options: dict) -> float:
    """cond(J) of the reference's label-map statistics, over the windows that count."""
    region_options = {k: options[k] for k in ("rmi_radius", "rmi_pool_way", "rmi_pool_stride")}
    valid, target = reference.label_targets(labels, options["num_classes"], 255)
    p, y = reference.label_regions(logits, valid, target, **region_options)
    return reference.joint_condition_of_regions(
        p, y, reference.LABEL_EPSILON, window_weights(labels, options)
    )


def check_label_case(case) -> None:
    logits, labels, options, (channel_axis, layout) = case
    expected = reference.label_rmi_loss(logits, labels, **options)
    jax_result = jax_value_and_grads(
        lambda x: jax_label_loss(x, jnp.asarray(labels), channel_axis=channel_axis, **options),
        logits.astype(np.float32),
        channel_axis=channel_axis,
    )

    def loss(x, double=False):
        return torch_label_loss(x, torch.tensor(labels), use_double_precision=double, **options)

    contiguous = torch_value_and_grads(loss, logits, layout="contiguous")
    laid_out = torch_value_and_grads(loss, logits, layout=layout)
    double = torch_value_and_grads(
        lambda x: loss(x, double=True), logits, layout=layout, dtype=torch.float64
    )
    assert_finite(jax_result, contiguous, laid_out, double)
    np.testing.assert_allclose(double[0], expected, rtol=F64_VALUE_RTOL, atol=F64_VALUE_ATOL)
    for value in (jax_result[0], contiguous[0]):
        np.testing.assert_allclose(value, expected, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)
    condition = label_condition(logits, labels, options)
    assert_same_math(laid_out, contiguous, condition)
    grad_jax, grad_torch = jax_result[1][0], contiguous[1][0]
    assert relative_error(grad_jax, grad_torch) < cross_backend_grad_rtol(condition)


@pytest.mark.parametrize("max_examples", LABEL_TIERS)
@pytest.mark.parametrize("pool_way", [0, 1, 2])
def test_label_maps_with_scattered_ignored_pixels_match_the_reference(
    pool_way, max_examples
) -> None:
    check_examples(max_examples, label_cases(pool_way), check_label_case)
