"""PyTorch backend vs the independent NumPy reference, on every fixture (the default tier: on the
covering subset of ``tiers.py``)."""

import numpy as np
import pytest
import torch

from parity_tests.backends import torch_tensor, torch_value_and_grad
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tiers import DEFAULT_DENSE, tiered
from parity_tests.tolerances import (
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    F64_VALUE_RTOL,
    FD_GRAD_RTOL,
    f32_grad_rtol,
    relative_error,
)
from rmi_torch import RMILoss, rmi_loss

FIXTURES = load_fixtures()
WITH_FD = [f for f in FIXTURES if f.grad_fd is not None]
ALL = tiered(FIXTURES, DEFAULT_DENSE)
ALL_WITH_FD = tiered(WITH_FD, DEFAULT_DENSE)


@pytest.mark.parametrize("fixture", ALL)
def test_float64_value_matches_reference(fixture: Fixture) -> None:
    value, grad = torch_value_and_grad(fixture, double=True)
    np.testing.assert_allclose(value, fixture.value, rtol=F64_VALUE_RTOL, atol=0)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fixture", ALL)
def test_float64_per_example_matches_reference(fixture: Fixture) -> None:
    per_example, _ = torch_value_and_grad(fixture, double=True, reduction="none")
    np.testing.assert_allclose(per_example, fixture.per_example, rtol=F64_VALUE_RTOL, atol=0)
    summed, _ = torch_value_and_grad(fixture, double=True, reduction="sum")
    np.testing.assert_allclose(summed, fixture.per_example.sum(), rtol=F64_VALUE_RTOL, atol=0)


@pytest.mark.parametrize("fixture", ALL_WITH_FD)
def test_float64_gradient_matches_finite_differences(fixture: Fixture) -> None:
    _, grad = torch_value_and_grad(fixture, double=True)
    assert relative_error(grad, fixture.grad_fd) < FD_GRAD_RTOL


@pytest.mark.parametrize("fixture", ALL)
def test_float32_route_matches_reference(fixture: Fixture) -> None:
    value, grad = torch_value_and_grad(fixture, double=False)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, fixture.value, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)
    _, grad64 = torch_value_and_grad(fixture, double=True)
    assert relative_error(grad, grad64) < f32_grad_rtol(fixture)


MODULE_CASES = (
    FIXTURES[:: max(1, len(FIXTURES) // 6)] + [f for f in FIXTURES if f.valid_mask is not None][:1]
)


@pytest.mark.parametrize("fixture", MODULE_CASES, ids=str)
def test_module_equals_functional(fixture: Fixture) -> None:
    pred = torch_tensor(fixture.pred)
    target = torch_tensor(fixture.target)
    mask = fixture.mask_argument(torch_tensor)
    module = RMILoss(**fixture.options)
    expected = rmi_loss(pred, target, **fixture.options, **mask)
    assert torch.equal(module(pred, target, **mask), expected)
