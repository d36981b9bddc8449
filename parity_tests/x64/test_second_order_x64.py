"""Second order in JAX float64: ``jax.grad`` of ``jax.grad`` (reverse over reverse) through every
downsampling, checked as Hessian-vector products against central differences of the gradient.

Runs with x64 on (``conftest.py``): the inputs become float64 JAX arrays inside the tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity_tests.tolerances import FD_GRAD_RTOL, relative_error
from rmi_jax import rmi_loss, rmi_loss_from_labels

# Step of the central differences of the gradient: truncation ~h^2 and rounding ~u/h both stay
# near 1e-10 relative for these O(1) gradients.
HVP_FD_STEP = 1e-5
RNG = np.random.default_rng(17)
SHAPE = (1, 12, 13, 2)  # NHWC
LOGITS = RNG.standard_normal(SHAPE)
TARGET = (RNG.random(SHAPE) < 0.5).astype(np.float64)
DIRECTION = RNG.standard_normal(SHAPE)


def hvp_and_differences(loss, x):
    """The Hessian-vector product along DIRECTION and central differences of the gradient, both
    jitted (a jitted second order through max pooling once failed where eager worked)."""
    grad = jax.grad(loss)
    direction = jnp.asarray(DIRECTION)
    hvp = jax.jit(jax.grad(lambda y: jnp.vdot(grad(y), direction)))(x)
    step = HVP_FD_STEP * direction
    jitted_grad = jax.jit(grad)
    return hvp, (jitted_grad(x + step) - jitted_grad(x - step)) / (2 * HVP_FD_STEP)


# One dense (max pooling, the default) and one label-map case in the default tier, the other
# downsamplings in the full tier.
@pytest.mark.parametrize(
    "with_logits, method, stride",
    [
        (True, "max", 3),
        pytest.param(True, "avg", 3, marks=pytest.mark.full),
        pytest.param(True, "region-extraction", 2, marks=pytest.mark.full),
        pytest.param(False, "max", 1, marks=pytest.mark.full),
        pytest.param(False, "avg", 2, marks=pytest.mark.full),
    ],
)
def test_dense_hessian_vector_product(with_logits, method, stride) -> None:
    logits = jnp.asarray(LOGITS)
    x = logits if with_logits else jax.nn.sigmoid(logits)

    def loss(p):
        return rmi_loss(
            p,
            jnp.asarray(TARGET),
            with_logits=with_logits,
            downsampling_method=method,
            stride=stride,
            use_double_precision=True,
        )

    hvp, expected = hvp_and_differences(loss, x)
    assert relative_error(hvp, expected) < FD_GRAD_RTOL


@pytest.mark.parametrize(
    "pool_way",
    [pytest.param(0, marks=pytest.mark.full), 1, pytest.param(2, marks=pytest.mark.full)],
)
def test_label_hessian_vector_product(pool_way) -> None:
    labels = jnp.asarray(RNG.integers(0, SHAPE[-1], SHAPE[:-1]))

    def loss(x):
        return rmi_loss_from_labels(
            x, labels, num_classes=SHAPE[-1], rmi_pool_way=pool_way, use_double_precision=True
        )

    hvp, expected = hvp_and_differences(loss, jnp.asarray(LOGITS))
    assert relative_error(hvp, expected) < FD_GRAD_RTOL
