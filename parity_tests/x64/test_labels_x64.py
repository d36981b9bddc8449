"""Label-map RMI (docs/semantics.md#label-maps) in JAX float64 vs the reference and PyTorch, with
x64 on (``conftest.py``)."""

import jax
import numpy as np
import pytest

from parity_tests.backends import jax_label_value_and_grad, torch_label_value_and_grad
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tiers import DEFAULT_EQUIVALENCE, DEFAULT_LABELS, tiered
from parity_tests.tolerances import (
    CROSS_BACKEND_GRAD_RTOL,
    F64_VALUE_RTOL,
    FD_GRAD_RTOL,
    relative_error,
)

FIXTURES = load_fixtures("labels-*.npz")
WITH_FD = [f for f in FIXTURES if f.grad_fd is not None]
ALL = tiered(FIXTURES, DEFAULT_LABELS)
ALL_WITH_FD = tiered(WITH_FD, DEFAULT_LABELS)
# Every fifth fixture in the full tier, as before; the default tier's equivalence fixtures.
LAYOUT = tiered(FIXTURES[::5], DEFAULT_EQUIVALENCE)


def test_x64_is_enabled() -> None:
    assert jax.config.read("jax_enable_x64")


@pytest.mark.parametrize("fixture", ALL)
def test_float64_value_matches_reference(fixture: Fixture) -> None:
    value, grad = jax_label_value_and_grad(fixture, double=True)
    assert value.dtype == np.float64 and value.shape == ()
    np.testing.assert_allclose(value, fixture.value, rtol=F64_VALUE_RTOL, atol=0)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fixture", ALL_WITH_FD)
def test_float64_gradient_matches_finite_differences(fixture: Fixture) -> None:
    _, grad = jax_label_value_and_grad(fixture, double=True)
    assert relative_error(grad, fixture.grad_fd) < FD_GRAD_RTOL


@pytest.mark.parametrize("fixture", ALL)
def test_jax_and_torch_agree_in_float64(fixture: Fixture) -> None:
    jax_value, jax_grad = jax_label_value_and_grad(fixture, double=True)
    torch_value, torch_grad = torch_label_value_and_grad(fixture, double=True)
    np.testing.assert_allclose(jax_value, torch_value, rtol=F64_VALUE_RTOL, atol=0)
    assert relative_error(jax_grad, torch_grad) < CROSS_BACKEND_GRAD_RTOL


@pytest.mark.parametrize("fixture", LAYOUT)
def test_nhwc_equals_nchw_in_float64(fixture: Fixture) -> None:
    nchw_value, nchw_grad = jax_label_value_and_grad(fixture, double=True)
    nhwc_value, nhwc_grad = jax_label_value_and_grad(fixture, double=True, channel_axis=-1)
    np.testing.assert_allclose(nhwc_value, nchw_value, rtol=F64_VALUE_RTOL, atol=0)
    assert relative_error(nhwc_grad, nchw_grad) < CROSS_BACKEND_GRAD_RTOL
