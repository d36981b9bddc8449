"""What a jit-compiled training loop needs from the loss: term weights that may change every step
without recompiling, clear errors for options that cannot be traced, both terms for logging, and
the softmax cross-entropy + RMI recipe (docs: README, "Softmax cross-entropy + RMI")."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rmi_jax
import rmi_torch
from parity_tests import reference
from parity_tests.tolerances import (
    F32_SAME_MATH_ATOL,
    F32_SAME_MATH_RTOL,
    F64_VALUE_RTOL,
    relative_error,
)

SHAPE = (2, 3, 24, 24)  # NCHW
RNG = np.random.default_rng(21)
LOGITS = RNG.standard_normal(SHAPE).astype(np.float32)
TARGET = (RNG.random(SHAPE) < 0.4).astype(np.float32)
LABELS = RNG.integers(0, SHAPE[1], (SHAPE[0], *SHAPE[2:]))
LABELS[RNG.random(LABELS.shape) < 0.05] = 255


def jax_dense(bce_weight, **options):
    return lambda x: rmi_jax.rmi_loss(
        x, jnp.asarray(TARGET), with_logits=True, channel_axis=1, bce_weight=bce_weight, **options
    )


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_jax_traced_bce_weight_equals_the_static_weight(weight) -> None:
    static = jax.value_and_grad(jax_dense(weight))(jnp.asarray(LOGITS))
    traced = jax.jit(
        lambda x, w: jax.value_and_grad(
            lambda y: rmi_jax.rmi_loss(
                y, jnp.asarray(TARGET), with_logits=True, channel_axis=1, bce_weight=w
            )
        )(x)
    )(jnp.asarray(LOGITS), jnp.float32(weight))
    np.testing.assert_allclose(
        traced[0], static[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
    )
    assert relative_error(traced[1], static[1]) < F32_SAME_MATH_RTOL


def test_jax_a_weight_schedule_compiles_once() -> None:
    traces = []

    @jax.jit
    def step(x, weight):
        traces.append(1)  # runs once per compilation
        return jax.value_and_grad(
            lambda y: rmi_jax.rmi_loss(
                y, jnp.asarray(TARGET), with_logits=True, channel_axis=1, bce_weight=weight
            )
        )(x)

    for weight in np.linspace(1.0, 0.2, 5, dtype=np.float32):
        step(jnp.asarray(LOGITS), weight)
    assert len(traces) == 1
    assert step._cache_size() == 1


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_torch_tensor_bce_weight_equals_the_float_weight(weight) -> None:
    def value_and_grad(w):
        x = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
        value = rmi_torch.rmi_loss(x, torch.tensor(TARGET), with_logits=True, bce_weight=w)
        value.backward()
        return float(value.detach()), x.grad

    expected = value_and_grad(weight)
    actual = value_and_grad(torch.tensor(weight, dtype=torch.float64))
    assert actual[0] == pytest.approx(expected[0], rel=F64_VALUE_RTOL)
    assert relative_error(actual[1], expected[1]) < F64_VALUE_RTOL


def test_label_loss_takes_a_traced_lambda() -> None:
    def loss(x, lam):
        return rmi_jax.rmi_loss_from_labels(
            x, jnp.asarray(LABELS), num_classes=SHAPE[1], channel_axis=1, loss_weight_lambda=lam
        )

    traced = jax.jit(loss)(jnp.asarray(LOGITS), jnp.float32(0.25))
    static = loss(jnp.asarray(LOGITS), 0.25)
    np.testing.assert_allclose(traced, static, rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL)
    value = rmi_torch.rmi_loss_from_labels(
        torch.tensor(LOGITS),
        torch.tensor(LABELS),
        num_classes=SHAPE[1],
        loss_weight_lambda=torch.tensor(0.25),
    )
    np.testing.assert_allclose(float(value), static, rtol=1e-5)


def test_an_array_weight_must_be_a_scalar() -> None:
    with pytest.raises(ValueError, match=r"bce_weight must be a number in \[0, 1\] or a 0-d array"):
        jax_dense(jnp.ones(2))(jnp.asarray(LOGITS))
    with pytest.raises(ValueError, match=r"bce_weight must be a number in \[0, 1\] or a 0-d array"):
        rmi_torch.rmi_loss(
            torch.tensor(LOGITS), torch.tensor(TARGET), with_logits=True, bce_weight=torch.ones(2)
        )


@pytest.mark.parametrize(
    "name, value",
    [
        ("radius", 3),
        ("stride", 2),
        ("with_logits", True),
        ("use_log_trace", False),
        ("epsilon", 1e-3),
        ("channel_axis", 1),
    ],
)
def test_a_traced_static_option_says_how_to_keep_it_static(name, value) -> None:
    options = {"with_logits": True, "channel_axis": 1}

    def loss(x, option):
        return rmi_jax.rmi_loss(x, jnp.asarray(TARGET), **{**options, name: option})

    with pytest.raises(TypeError) as error:
        jax.jit(loss)(jnp.asarray(LOGITS), value)
    message = str(error.value)
    assert f"{name} must be a Python value" in message
    assert "functools.partial" in message and f"static_argnames=('{name}',)" in message
    # The two fixes the message names both work.
    fixed = jax.jit(functools.partial(loss, option=value))
    assert np.isfinite(fixed(jnp.asarray(LOGITS)))
    assert np.isfinite(
        jax.jit(loss, static_argnames=("option",))(jnp.asarray(LOGITS), option=value)
    )


def test_a_traced_label_option_says_how_to_keep_it_static() -> None:
    def loss(x, radius):
        return rmi_jax.rmi_loss_from_labels(
            x, jnp.asarray(LABELS), num_classes=SHAPE[1], channel_axis=1, rmi_radius=radius
        )

    with pytest.raises(TypeError, match=r"rmi_radius must be a Python value .*static_argnames"):
        jax.jit(loss)(jnp.asarray(LOGITS), 3)


# --- Both terms, for logging --------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bce_weight", [0.0, 0.5, 1.0])
def test_terms_add_up_and_match_the_reference(bce_weight, reduction) -> None:
    options = {"with_logits": True, "bce_weight": bce_weight, "reduction": reduction}
    terms = rmi_torch.rmi_loss(
        torch.tensor(LOGITS, dtype=torch.float64),
        torch.tensor(TARGET),
        return_terms=True,
        **options,
    )
    total = rmi_torch.rmi_loss(
        torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(TARGET), **options
    )
    assert torch.equal(terms.total, total)
    # The terms are the reference's BCE-only and RMI-only losses.
    pred64, target64 = LOGITS.astype(np.float64), TARGET.astype(np.float64)
    for term, weight in ((terms.bce, 1.0), (terms.rmi, 0.0)):
        per_example = reference.dense_rmi_per_example(
            pred64, target64, with_logits=True, bce_weight=weight
        )
        expected = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}
        np.testing.assert_allclose(term.numpy(), expected[reduction], rtol=F64_VALUE_RTOL)
    np.testing.assert_allclose(
        terms.total.numpy(),
        (bce_weight * terms.bce + (1 - bce_weight) * terms.rmi).numpy(),
        rtol=F64_VALUE_RTOL,
    )
    jax_terms = rmi_jax.rmi_loss(
        jnp.asarray(LOGITS), jnp.asarray(TARGET), channel_axis=1, return_terms=True, **options
    )
    for name in ("total", "bce", "rmi"):
        np.testing.assert_allclose(
            getattr(jax_terms, name), getattr(terms, name).numpy(), rtol=1e-5, atol=1e-5
        )


def test_terms_leave_the_gradient_of_the_total_unchanged() -> None:
    def total(x):
        return rmi_jax.rmi_loss(x, jnp.asarray(TARGET), with_logits=True, channel_axis=1)

    def with_terms(x):
        terms = rmi_jax.rmi_loss(
            x, jnp.asarray(TARGET), with_logits=True, channel_axis=1, return_terms=True
        )
        return terms.total, terms

    grad = jax.grad(total)(jnp.asarray(LOGITS))
    (value, terms), grad_terms = jax.value_and_grad(with_terms, has_aux=True)(jnp.asarray(LOGITS))
    np.testing.assert_array_equal(grad_terms, grad)
    assert value == terms.total
    x = torch.tensor(LOGITS, requires_grad=True)
    rmi_torch.RMILoss(with_logits=True)(x, torch.tensor(TARGET)).backward()
    y = torch.tensor(LOGITS, requires_grad=True)
    rmi_torch.RMILoss(with_logits=True, return_terms=True)(y, torch.tensor(TARGET)).total.backward()
    assert torch.equal(x.grad, y.grad)


@pytest.mark.parametrize("lambda_way", [0, 1])
def test_label_terms_add_up(lambda_way) -> None:
    options = {"num_classes": SHAPE[1], "lambda_way": lambda_way, "loss_weight_lambda": 0.3}
    terms = rmi_torch.LabelRMILoss(return_terms=True, **options)(
        torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(LABELS)
    )
    bce_weight, rmi_weight = (0.3, 0.7) if lambda_way == 1 else (1.0, 0.3)
    np.testing.assert_allclose(
        float(terms.total),
        bce_weight * float(terms.bce) + rmi_weight * float(terms.rmi),
        rtol=F64_VALUE_RTOL,
    )
    expected = reference.label_rmi_loss(LOGITS.astype(np.float64), LABELS, **options)
    np.testing.assert_allclose(float(terms.total), expected, rtol=F64_VALUE_RTOL)
    jax_terms = rmi_jax.rmi_loss_from_labels(
        jnp.asarray(LOGITS), jnp.asarray(LABELS), channel_axis=1, return_terms=True, **options
    )
    for name in ("total", "bce", "rmi"):
        np.testing.assert_allclose(
            getattr(jax_terms, name), float(getattr(terms, name)), rtol=1e-5, atol=1e-5
        )
