"""JAX's default float32 route vs the NumPy reference, plus layout, jit and vmap invariances.

Runs with x64 off, as JAX users do by default; the float64 checks live in ``x64/``. The default
tier checks a covering subset of the fixtures and the equivalences on a few (``tiers.py``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity_tests.backends import jax_reductions, jax_value_and_grad, torch_value_and_grad
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tiers import DEFAULT_DENSE, DEFAULT_EAGER, DEFAULT_EQUIVALENCE, tiered
from parity_tests.tolerances import (
    F32_SAME_MATH_ATOL,
    F32_SAME_MATH_RTOL,
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    f32_grad_rtol,
    f32_same_math_grad_rtol,
    relative_error,
)
from rmi_jax import rmi_loss

FIXTURES = load_fixtures()
WITH_FD = [f for f in FIXTURES if f.grad_fd is not None]
ALL = tiered(FIXTURES, DEFAULT_DENSE)
ALL_WITH_FD = tiered(WITH_FD, DEFAULT_DENSE)
EQUIVALENCE = tiered(FIXTURES, DEFAULT_EQUIVALENCE)
EAGER = tiered(FIXTURES, DEFAULT_EAGER)


def nchw_loss(fixture: Fixture, examples: slice = slice(None), **overrides):
    """The fixture's loss on NCHW inputs, jitted; ``examples`` selects the rows of its mask."""
    mask = fixture.mask_argument(lambda mask: jnp.asarray(mask[examples]))
    options = {**fixture.options, **mask, "channel_axis": 1, **overrides}
    return jax.jit(lambda pred, target: rmi_loss(pred, target, **options))


def assert_same_math(actual, expected) -> None:
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
    )


@pytest.mark.parametrize("fixture", ALL)
def test_float32_value_matches_reference(fixture: Fixture) -> None:
    value, grad = jax_value_and_grad(fixture, double=False)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, fixture.value, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fixture", ALL_WITH_FD)
def test_float32_gradient_matches_finite_differences(fixture: Fixture) -> None:
    _, grad = jax_value_and_grad(fixture, double=False)
    assert relative_error(grad, fixture.grad_fd) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", ALL)
def test_float32_gradient_matches_torch_float64(fixture: Fixture) -> None:
    # The float64 PyTorch gradient is held to the reference (finite differences) and to JAX's
    # float64 one in test_torch.py and x64/; here it stands in for the exact gradient.
    _, grad = jax_value_and_grad(fixture, double=False)
    _, grad64 = torch_value_and_grad(fixture, double=True)
    assert relative_error(grad, grad64) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", EQUIVALENCE)
def test_nhwc_equals_nchw(fixture: Fixture) -> None:
    pred, target = jnp.asarray(fixture.pred), jnp.asarray(fixture.target)
    nchw = nchw_loss(fixture)(pred, target)
    nhwc = nchw_loss(fixture, channel_axis=-1)(
        jnp.moveaxis(pred, 1, -1), jnp.moveaxis(target, 1, -1)
    )
    assert_same_math(nhwc, nchw)


@pytest.mark.parametrize("fixture", EAGER)
def test_jit_equals_eager(fixture: Fixture) -> None:
    eager = jax_value_and_grad(fixture, double=False, jit=False)
    jitted = jax_value_and_grad(fixture, double=False)
    assert_same_math(jitted[0], eager[0])
    assert relative_error(jitted[1], eager[1]) < f32_same_math_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", EQUIVALENCE)
def test_vmap_over_leading_axis_equals_loop(fixture: Fixture) -> None:
    # A second, different prediction so the two mapped slices really differ.
    preds = jnp.stack([jnp.asarray(fixture.pred), 0.5 * jnp.asarray(fixture.pred)])
    target = jnp.asarray(fixture.target)
    loss = nchw_loss(fixture)
    mapped = jax.jit(jax.vmap(loss, in_axes=(0, None)))(preds, target)
    looped = jnp.stack([loss(p, target) for p in preds])
    assert_same_math(mapped, looped)


@pytest.mark.parametrize("fixture", EQUIVALENCE)
def test_reduction_none_matches_per_example_calls(fixture: Fixture) -> None:
    pred, target = jnp.asarray(fixture.pred), jnp.asarray(fixture.target)
    values = jax_reductions(fixture, double=False)
    per_example = values["none"]
    singles = [
        nchw_loss(fixture, slice(n, n + 1))(pred[n : n + 1], target[n : n + 1])
        for n in range(len(pred))
    ]
    assert per_example.shape == (len(pred),)
    assert_same_math(per_example, jnp.stack(singles))
    assert_same_math(per_example.mean(), values["mean"])
    assert_same_math(per_example.sum(), values["sum"])
    np.testing.assert_allclose(
        per_example, fixture.per_example, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL
    )
