"""Behaviour of the public API of both backends, beyond the fixture parity suite."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import rmi_jax
import rmi_torch
from parity_tests.tolerances import (
    F32_FEW_ROUNDINGS_RTOL,
    F32_SAME_MATH_ATOL,
    F32_SAME_MATH_RTOL,
)

# Gradient entries here are about 1e-4: entries near zero get an absolute floor a thousand times
# smaller.
GRAD_ATOL = 1e-7
# float32 vs float64 of the same backend on a well-posed input: float32 rounding through the
# QR route stays near 1e-6 (see the README table); 1e-4 leaves margin on small random inputs.
F32_VS_F64_RTOL = 1e-4
# bfloat16 inputs carry 8 significant bits: results agree with float32 to about 2**-8.
BF16_RTOL = 2e-2
# float16 inputs carry 11 significant bits.
F16_RTOL = 2e-3


def random_inputs(shape=(2, 3, 24, 20), seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape).astype(np.float32)
    target = (rng.random(shape) > 0.5).astype(np.float32)
    return logits, target


def jax_loss(pred, target, **options):
    return rmi_jax.rmi_loss(jnp.asarray(pred), jnp.asarray(target), channel_axis=1, **options)


def torch_loss(pred, target, **options):
    options.setdefault("use_double_precision", False)
    return rmi_torch.rmi_loss(torch.as_tensor(pred), torch.as_tensor(target), **options)


BACKENDS = [pytest.param(jax_loss, id="jax"), pytest.param(torch_loss, id="torch")]


@pytest.mark.parametrize("loss", BACKENDS)
@pytest.mark.parametrize("use_log_trace", [True, False])
@pytest.mark.parametrize("bce_weight", [0.0, 0.5])
def test_constant_prediction_and_target_give_the_closed_form(loss, use_log_trace, bce_weight):
    """Constant maps centre to zero, M = 0, and each (n, c) gives log(sqrt(eps) + offset)
    (docs/semantics.md#float32-facts)."""
    eps, classes, p, y = 5e-4, 3, 0.3, 1.0
    pred = np.full((2, classes, 15, 15), p, np.float32)
    target = np.full_like(pred, y)
    offset = 1e-8 if use_log_trace else 0.0
    rmi = classes * math.log(math.sqrt(eps) + offset)
    bce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
    expected = (1 - bce_weight) * rmi + bce_weight * bce
    value = loss(
        pred, target, with_logits=False, bce_weight=bce_weight, use_log_trace=use_log_trace
    )
    np.testing.assert_allclose(float(value), expected, rtol=F32_SAME_MATH_RTOL)


@pytest.mark.parametrize("loss", BACKENDS)
def test_bce_only_equals_an_independent_bce(loss):
    logits, target = random_inputs()
    expected = float(optax.sigmoid_binary_cross_entropy(logits, target).mean())
    np.testing.assert_allclose(
        float(loss(logits, target, with_logits=True, bce_weight=1.0)),
        expected,
        rtol=F32_SAME_MATH_RTOL,
    )
    torch_bce = torch.nn.functional.binary_cross_entropy(
        torch.sigmoid(torch.tensor(logits)), torch.tensor(target)
    )
    probabilities = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(
        float(loss(probabilities, target, with_logits=False, bce_weight=1.0)),
        float(torch_bce),
        rtol=F32_SAME_MATH_RTOL,
    )


def jax_value_and_grads(pred, target, **options):
    fn = lambda p, t: jax_loss(p, t, **options)  # noqa: E731
    value_and_grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    value, (gp, gt) = value_and_grad(jnp.asarray(pred), jnp.asarray(target))
    return float(value), np.asarray(gp), np.asarray(gt)


def torch_value_and_grads(pred, target, **options):
    p = torch.tensor(pred, requires_grad=True)
    t = torch.tensor(target, requires_grad=True)
    value = torch_loss(p, t, **options)
    value.backward()
    return value.item(), p.grad.numpy(), t.grad.numpy()


VALUE_AND_GRADS = [
    pytest.param(jax_value_and_grads, id="jax"),
    pytest.param(torch_value_and_grads, id="torch"),
]


@pytest.mark.parametrize("value_and_grads", VALUE_AND_GRADS)
@pytest.mark.parametrize("scale", [100.0, -100.0])
def test_extreme_logits_stay_finite(value_and_grads, scale):
    logits, target = random_inputs()
    value, grad_pred, grad_target = value_and_grads(
        np.sign(logits) * scale, target, with_logits=True
    )
    assert math.isfinite(value)
    assert np.isfinite(grad_pred).all() and np.isfinite(grad_target).all()


# float32 vs float64 on the near-perfect case of docs/semantics.md#float32-facts (64x64 here): the
# issue's bounds, 1e-5 at stride 3 and 1e-3 at stride 1 (where the literal float32 code fails).
NEAR_PERFECT_RTOL = {3: 1e-5, 1: 1e-3}


@pytest.mark.parametrize("value_and_grads", VALUE_AND_GRADS)
@pytest.mark.parametrize("stride", [1, 3])
def test_float32_near_perfect_prediction_is_finite_and_accurate(value_and_grads, stride):
    _, target = random_inputs(shape=(1, 2, 64, 64))
    pred = 0.98 * target + 0.01
    options = {"with_logits": False, "bce_weight": 0.0, "stride": stride}
    value, grad_pred, grad_target = value_and_grads(pred, target, **options)
    expected = rmi_torch.rmi_loss(
        torch.tensor(pred, dtype=torch.float64),
        torch.tensor(target, dtype=torch.float64),
        **options,
    )
    np.testing.assert_allclose(value, float(expected), rtol=NEAR_PERFECT_RTOL[stride])
    assert np.isfinite(grad_pred).all() and np.isfinite(grad_target).all()


@pytest.mark.parametrize("loss", BACKENDS)
@pytest.mark.parametrize("dtype, rtol", [("bfloat16", BF16_RTOL), ("float16", F16_RTOL)])
def test_low_precision_inputs_give_float32_results(loss, dtype, rtol):
    logits, target = random_inputs()
    if loss is jax_loss:
        low = jnp.asarray(logits, getattr(jnp, dtype))
        upcast = np.asarray(low.astype(jnp.float32))
    else:
        low = torch.tensor(logits).to(getattr(torch, dtype))
        upcast = low.float().numpy()
    value = loss(low, target, with_logits=True)
    assert str(value.dtype).removeprefix("torch.") == "float32"
    np.testing.assert_allclose(
        float(value), float(loss(upcast, target, with_logits=True)), rtol=rtol
    )


@pytest.mark.parametrize("loss", BACKENDS)
@pytest.mark.parametrize("target_dtype", ["bool", "int32"])
def test_boolean_and_integer_targets_are_accepted(loss, target_dtype):
    logits, target = random_inputs()
    expected = float(loss(logits, target, with_logits=True))
    np.testing.assert_allclose(
        float(loss(logits, target.astype(target_dtype), with_logits=True)),
        expected,
        rtol=F32_SAME_MATH_RTOL,
    )


@pytest.mark.parametrize("loss", BACKENDS)
def test_reduction_shapes(loss):
    logits, target = random_inputs()
    assert tuple(loss(logits, target, with_logits=True).shape) == ()
    assert tuple(loss(logits, target, with_logits=True, reduction="sum").shape) == ()
    assert tuple(loss(logits, target, with_logits=True, reduction="none").shape) == (2,)


def test_jax_jit_with_static_option_names():
    logits, target = random_inputs()
    nhwc = np.moveaxis(logits, 1, -1), np.moveaxis(target, 1, -1)
    jitted = jax.jit(rmi_jax.rmi_loss, static_argnames=("with_logits", "stride", "radius"))
    np.testing.assert_allclose(
        float(jitted(*nhwc, with_logits=True, stride=2, radius=2)),
        float(rmi_jax.rmi_loss(*nhwc, with_logits=True, stride=2, radius=2)),
        rtol=F32_SAME_MATH_RTOL,
    )


def test_jax_and_torch_float32_values_and_gradients_agree():
    logits, target = random_inputs(seed=3)
    jv, jgp, jgt = jax_value_and_grads(logits, target, with_logits=True)
    tv, tgp, tgt = torch_value_and_grads(logits, target, with_logits=True)
    np.testing.assert_allclose(jv, tv, rtol=F32_SAME_MATH_RTOL)
    for a, b in ((jgp, tgp), (jgt, tgt)):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < F32_VS_F64_RTOL


def test_torch_float32_route_is_close_to_float64():
    logits, target = random_inputs(seed=4)
    f32 = float(torch_loss(logits, target, with_logits=True, use_double_precision=False))
    f64 = float(torch_loss(logits, target, with_logits=True, use_double_precision=True))
    np.testing.assert_allclose(f32, f64, rtol=F32_VS_F64_RTOL)


def test_torch_module_has_the_reference_constructor():
    """Drop-in for rmi-pytorch 0.1.2: positional order, names and defaults
    (docs/semantics.md#dense-api)."""
    reference = [
        ("with_logits", inspect.Parameter.empty),
        ("radius", 3),
        ("bce_weight", 0.5),
        ("downsampling_method", "max"),
        ("stride", 3),
        ("use_log_trace", True),
        ("use_double_precision", True),
        ("epsilon", 0.0005),
    ]
    params = list(inspect.signature(rmi_torch.RMILoss.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params[: len(reference)]] == reference
    assert params[len(reference)].name == "reduction"


def test_torch_module_defaults_return_float64_like_the_reference():
    logits, target = random_inputs()
    loss = rmi_torch.RMILoss(True)
    value = loss(torch.tensor(logits), torch.tensor(target))
    assert value.dtype == torch.float64
    assert "with_logits=True" in repr(loss)


def test_option_names_and_order_match_across_backends():
    def keyword_only(fn):
        params = inspect.signature(fn).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    jax_options = keyword_only(rmi_jax.rmi_loss)
    assert [n for n in jax_options if n != "channel_axis"] == keyword_only(rmi_torch.rmi_loss)
    assert inspect.signature(rmi_jax.rmi_loss).parameters["use_double_precision"].default is False


def test_vmap_of_grad_over_an_extra_leading_axis():
    logits, target = random_inputs()
    stacked = jnp.stack([jnp.asarray(logits), -jnp.asarray(logits)])
    grad = jax.jit(jax.grad(lambda q: jax_loss(q, target, with_logits=True)))
    mapped = jax.jit(jax.vmap(grad))(stacked)
    for i in range(2):
        np.testing.assert_allclose(
            mapped[i], grad(stacked[i]), rtol=F32_SAME_MATH_RTOL, atol=GRAD_ATOL
        )


def test_torch_module_under_cpu_bfloat16_autocast() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
    images = torch.randn(2, 3, 32, 32)
    target = (torch.rand(2, 4, 32, 32) > 0.5).float()
    loss_fn = rmi_torch.RMILoss(with_logits=True, use_double_precision=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    # The same bfloat16 logits outside autocast give the same loss: autocast changed nothing.
    expected = loss_fn(logits.detach(), target)
    torch.testing.assert_close(
        loss.detach(), expected, rtol=F32_FEW_ROUNDINGS_RTOL, atol=F32_SAME_MATH_ATOL
    )
