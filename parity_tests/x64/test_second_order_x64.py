"""Second order in JAX float64: ``jax.grad`` of ``jax.grad`` (reverse over reverse) through every
downsampling, checked as Hessian-vector products against central differences of the gradient.

Collected only with JAX_ENABLE_X64=1."""

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
LOGITS = jnp.asarray(RNG.standard_normal(SHAPE))
TARGET = jnp.asarray(RNG.random(SHAPE) < 0.5, jnp.float64)
DIRECTION = jnp.asarray(RNG.standard_normal(SHAPE))


def hvp_and_differences(loss, x):
    grad = jax.grad(loss)
    hvp = jax.grad(lambda y: jnp.vdot(grad(y), DIRECTION))(x)
    step = HVP_FD_STEP * DIRECTION
    return hvp, (grad(x + step) - grad(x - step)) / (2 * HVP_FD_STEP)


@pytest.mark.parametrize(
    "with_logits, method, stride",
    [
        (True, "max", 3),
        (True, "avg", 3),
        (True, "region-extraction", 2),
        (False, "max", 1),
        (False, "avg", 2),
    ],
)
def test_dense_hessian_vector_product(with_logits, method, stride) -> None:
    x = LOGITS if with_logits else jax.nn.sigmoid(LOGITS)

    def loss(p):
        return rmi_loss(
            p,
            TARGET,
            with_logits=with_logits,
            downsampling_method=method,
            stride=stride,
            use_double_precision=True,
        )

    hvp, expected = hvp_and_differences(loss, x)
    assert relative_error(hvp, expected) < FD_GRAD_RTOL


@pytest.mark.parametrize("pool_way", [0, 1, 2])
def test_label_hessian_vector_product(pool_way) -> None:
    labels = jnp.asarray(RNG.integers(0, SHAPE[-1], SHAPE[:-1]))

    def loss(x):
        return rmi_loss_from_labels(
            x, labels, num_classes=SHAPE[-1], rmi_pool_way=pool_way, use_double_precision=True
        )

    hvp, expected = hvp_and_differences(loss, LOGITS)
    assert relative_error(hvp, expected) < FD_GRAD_RTOL
