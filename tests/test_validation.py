"""Bad input gets the same clear error from both backends, before any computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rmi_jax
import rmi_torch

GOOD_SHAPE = (2, 3, 12, 12)  # NCHW; JAX is called with channel_axis=1 so shapes are shared.

# (case id, option overrides, pred shape, target shape, pred dtype, exception, message pattern)
CASES = [
    ("rank", {}, (3, 12, 12), (3, 12, 12), "float32", ValueError, r"rank 4.*\(3, 12, 12\)"),
    ("shape", {}, GOOD_SHAPE, (2, 3, 12, 11), "float32", ValueError, r"target must have the shape"),
    (
        "too-small",
        {"radius": 3, "stride": 3},
        (1, 1, 6, 6),
        (1, 1, 6, 6),
        "float32",
        ValueError,
        r"6x6 becomes 2x2 .* radius=3.* at least 7x7",
    ),
    (
        "radius<1",
        {"radius": 0},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        ValueError,
        r"radius must be >= 1, got 0",
    ),
    (
        "radius-type",
        {"radius": 2.5},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        TypeError,
        r"radius must be an int",
    ),
    (
        "stride<1",
        {"stride": 0},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        ValueError,
        r"stride must be >= 1, got 0",
    ),
    (
        "method",
        {"downsampling_method": "mean"},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        ValueError,
        r"downsampling_method must be one of \('max', 'avg', 'region-extraction'\), got 'mean'",
    ),
    (
        "bce>1",
        {"bce_weight": 1.5},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        ValueError,
        r"bce_weight must be in \[0, 1\], got 1.5",
    ),
    (
        "bce<0",
        {"bce_weight": -0.1},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        ValueError,
        r"bce_weight must be in \[0, 1\]",
    ),
    (
        "int-pred",
        {},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "int32",
        TypeError,
        r"must have a floating dtype, got int32",
    ),
    (
        "epsilon=0",
        {"epsilon": 0.0},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        ValueError,
        r"epsilon must be a positive",
    ),
    (
        "epsilon<0",
        {"epsilon": -1e-3},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        ValueError,
        r"epsilon must be a positive",
    ),
    (
        "reduction",
        {"reduction": "avg"},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        ValueError,
        r"Unsupported reduction: 'avg'",
    ),
    (
        "with_logits",
        {"with_logits": 1},
        GOOD_SHAPE,
        GOOD_SHAPE,
        "float32",
        TypeError,
        r"with_logits must be a bool",
    ),
    (
        "empty",
        {},
        (0, 3, 12, 12),
        (0, 3, 12, 12),
        "float32",
        ValueError,
        r"at least one example and one class",
    ),
]


def call_jax(overrides, pred_shape, target_shape, dtype):
    options = {"with_logits": True, "channel_axis": 1, **overrides}
    pred = jnp.zeros(pred_shape, dtype)
    return rmi_jax.rmi_loss(pred, jnp.zeros(target_shape), **options)


def call_torch(overrides, pred_shape, target_shape, dtype):
    options = {"with_logits": True, **overrides}
    pred = torch.zeros(pred_shape, dtype=getattr(torch, dtype))
    return rmi_torch.rmi_loss(pred, torch.zeros(target_shape), **options)


@pytest.mark.parametrize("backend", [call_jax, call_torch], ids=["jax", "torch"])
@pytest.mark.parametrize(
    "overrides, pred_shape, target_shape, dtype, error, pattern",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_raises_clear_error(
    backend, overrides, pred_shape, target_shape, dtype, error, pattern
) -> None:
    with pytest.raises(error, match=pattern):
        backend(overrides, pred_shape, target_shape, dtype)


@pytest.mark.parametrize(
    "channel_axis, error",
    [(4, ValueError), (-5, ValueError), (0, ValueError), (-4, ValueError), (1.0, TypeError)],
)
def test_jax_rejects_bad_channel_axis(channel_axis, error) -> None:
    # Axis 0 is the batch in every layout, so it cannot hold the classes.
    x = jnp.zeros((2, 12, 12, 3))
    with pytest.raises(error, match=r"channel_axis must be (an int|one of 1, 2, 3, -1, -2, -3)"):
        rmi_jax.rmi_loss(x, x, with_logits=True, channel_axis=channel_axis)


def test_jax_errors_are_raised_at_trace_time() -> None:
    """Under jit the checks run while tracing: no compiled computation is needed to fail."""
    traced = []

    def loss(x):
        traced.append(True)
        return rmi_jax.rmi_loss(x, x, with_logits=True, radius=0)

    with pytest.raises(ValueError, match="radius must be >= 1"):
        jax.jit(loss).lower(jnp.zeros((1, 12, 12, 1)))
    assert traced


def test_jax_double_precision_without_x64_names_the_flag() -> None:
    if jax.config.read("jax_enable_x64"):
        pytest.skip("this process has x64 enabled; the check needs it off")
    x = jnp.zeros((1, 12, 12, 1))
    with pytest.raises(ValueError, match="jax_enable_x64"):
        rmi_jax.rmi_loss(x, x, with_logits=True, use_double_precision=True)


def test_torch_module_validates_options_at_construction() -> None:
    with pytest.raises(ValueError, match="downsampling_method must be one of"):
        rmi_torch.RMILoss(with_logits=True, downsampling_method="median")


def test_torch_rejects_non_tensor_input() -> None:
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        rmi_torch.rmi_loss(np.zeros(GOOD_SHAPE), torch.zeros(GOOD_SHAPE), with_logits=True)
