"""JAX in float64 vs the NumPy reference and vs PyTorch, with x64 on (``conftest.py``)."""

import jax
import numpy as np
import pytest

from parity_tests.backends import jax_reductions, jax_value_and_grad, torch_value_and_grad
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tiers import DEFAULT_DENSE, DEFAULT_EQUIVALENCE, tiered
from parity_tests.tolerances import (
    CROSS_BACKEND_GRAD_RTOL,
    F64_VALUE_RTOL,
    FD_GRAD_RTOL,
    f32_grad_rtol,
    relative_error,
)

FIXTURES = load_fixtures()
WITH_FD = [f for f in FIXTURES if f.grad_fd is not None]
ALL = tiered(FIXTURES, DEFAULT_DENSE)
ALL_WITH_FD = tiered(WITH_FD, DEFAULT_DENSE)
# The float32 route with x64 on: its gradients are also held to float64 ones with x64 off
# (test_jax_float32.py), so the default tier checks a few fixtures here.
FLOAT32_WITH_X64 = tiered(FIXTURES, DEFAULT_EQUIVALENCE)


def test_x64_is_enabled() -> None:
    assert jax.config.read("jax_enable_x64")


@pytest.mark.parametrize("fixture", ALL)
def test_float64_value_matches_reference(fixture: Fixture) -> None:
    value, grad = jax_value_and_grad(fixture, double=True)
    assert value.dtype == np.float64
    np.testing.assert_allclose(value, fixture.value, rtol=F64_VALUE_RTOL, atol=0)
    per_example = jax_reductions(fixture, double=True)["none"]
    np.testing.assert_allclose(per_example, fixture.per_example, rtol=F64_VALUE_RTOL, atol=0)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fixture", ALL_WITH_FD)
def test_float64_gradient_matches_finite_differences(fixture: Fixture) -> None:
    _, grad = jax_value_and_grad(fixture, double=True)
    assert relative_error(grad, fixture.grad_fd) < FD_GRAD_RTOL


@pytest.mark.parametrize("fixture", ALL)
def test_jax_and_torch_gradients_agree(fixture: Fixture) -> None:
    jax_value, jax_grad = jax_value_and_grad(fixture, double=True)
    torch_value, torch_grad = torch_value_and_grad(fixture, double=True)
    np.testing.assert_allclose(jax_value, torch_value, rtol=F64_VALUE_RTOL, atol=0)
    assert relative_error(jax_grad, torch_grad) < CROSS_BACKEND_GRAD_RTOL


@pytest.mark.parametrize("fixture", FLOAT32_WITH_X64)
def test_float32_gradient_matches_float64(fixture: Fixture) -> None:
    _, grad32 = jax_value_and_grad(fixture, double=False)
    _, grad64 = jax_value_and_grad(fixture, double=True)
    assert relative_error(grad32, grad64) < f32_grad_rtol(fixture)
