"""Property-based tests: on any valid input, finite values and gradients; JAX equals PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from parity_tests.reference import dense_regions, joint_condition_number
from parity_tests.tolerances import relative_error
from rmi_jax import rmi_loss as jax_loss
from rmi_torch import rmi_loss as torch_loss

# Both float32 routes run the same algorithm up to BLAS reassociation: values agree to ~1e-6.
CROSS_BACKEND_F32_RTOL = 1e-4
CROSS_BACKEND_F32_ATOL = 1e-4
# Gradients: each backend is within ~u * cond(J) of the exact one (parity_tests/tolerances.py),
# so they are held to each other by twice that bound.


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
    return pred.astype(np.float32), target.astype(np.float32), options


def draw_mask(draw, rng: np.random.Generator, shape, options) -> np.ndarray:
    """A mask with a masked rectangle and a few masked pixels, keeping a window per example."""
    n, _, h, w = shape
    mask = rng.random((n, h, w)) >= draw(st.sampled_from([0.0, 0.02]))
    top, left = rng.integers(0, h), rng.integers(0, w)
    mask[:, top : top + rng.integers(1, h + 1), left : left + rng.integers(1, w + 1)] = False
    region_options = {k: options[k] for k in ("radius", "stride", "downsampling_method")}
    zeros = np.zeros(shape)
    _, _, weights = dense_regions(
        zeros, zeros, with_logits=False, valid_mask=mask, **region_options
    )
    assume(bool((weights.sum(axis=-1) > 0).all()))
    return mask


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_values_and_gradients_are_finite_and_backends_agree(case) -> None:
    pred, target, options = case
    mask = options.pop("valid_mask", None)
    value_jax, (grad_jax, tgrad_jax) = jax.value_and_grad(
        lambda p, y: jax_loss(p, y, channel_axis=1, valid_mask=mask, **options), argnums=(0, 1)
    )(jnp.asarray(pred), jnp.asarray(target))
    p = torch.tensor(pred, requires_grad=True)
    y = torch.tensor(target, requires_grad=True)
    torch_mask = None if mask is None else torch.tensor(mask)
    value_torch = torch_loss(p, y, use_double_precision=False, valid_mask=torch_mask, **options)
    value_torch.backward()
    for array in (value_jax, grad_jax, tgrad_jax):
        assert np.isfinite(np.asarray(array)).all()
    assert np.isfinite(p.grad.numpy()).all() and np.isfinite(y.grad.numpy()).all()
    np.testing.assert_allclose(
        float(value_jax),
        value_torch.item(),
        rtol=CROSS_BACKEND_F32_RTOL,
        atol=CROSS_BACKEND_F32_ATOL,
    )
    condition = joint_condition_number(pred, target, **options, valid_mask=mask)
    bound = max(CROSS_BACKEND_F32_RTOL, 2 * 16 * 2.0**-24 * condition)
    assert relative_error(grad_jax, p.grad.numpy()) < bound
