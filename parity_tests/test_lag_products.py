"""The lag-product statistics (docs/computation.md#lag-products) of both backends vs the NumPy
reference.

The fixtures' maps are small, and small maps take region vectors
(``rmi_core.numerics.LAG_PRODUCTS_MIN_WINDOWS``), so these tests lower that size to 0 and send
every fixture whose statistics can come from lag products (windows at spacing 1, no weights)
through them: float32 and float64 JAX, and float64 PyTorch (its float32 route never takes them).
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rmi_jax
import rmi_jax._statistics
import rmi_torch
import rmi_torch._statistics
from parity_tests.backends import (
    jax_label_value_and_grad,
    jax_value_and_grad,
    torch_label_value_and_grad,
    torch_value_and_grad,
)
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tiers import tiered
from parity_tests.tolerances import (
    CROSS_BACKEND_GRAD_RTOL,
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    F64_VALUE_RTOL,
    FD_GRAD_RTOL,
    f32_grad_rtol,
    relative_error,
)
from rmi_core import geometry, numerics


def _dense_lags(fixture: Fixture) -> bool:
    defaults = inspect.signature(rmi_jax.rmi_loss).parameters
    method, stride = (
        fixture.options.get(name, defaults[name].default)
        for name in ("downsampling_method", "stride")
    )
    return fixture.valid_mask is None and geometry.window_step(method, (stride, stride))[0] == 1


LABELS = "labels"
# Images only: volumes never take lag products (numerics.uses_lag_products).
IMAGES = [f for f in load_fixtures() if f.pred.ndim == 4]
FIXTURES = [f for f in IMAGES if _dense_lags(f)]
FIXTURES += [
    f
    for f in load_fixtures("labels-*.npz")
    if f.pred.ndim == 4 and not f.options.get("exclude_ignored")
]
# By default: the defaults on logits and on labels (each with an FD gradient), radius 1 and 4,
# average pooling, a near-singular map at stride 1, saturated probabilities, the smallest maps.
DEFAULT = {
    "dense-default-logits",
    "dense-radius1",
    "dense-near-perfect-stride1",
    "dense-saturated-max",
    "dense-radius3-stride1-minimum",
    "labels-default",
    "labels-avg",
    "labels-radius4",
}
ALL = tiered(FIXTURES, DEFAULT)
# The float64 JAX test checks both backends' float64 results on every fixture in the full tier;
# the others (a compilation each in JAX) run on the default subset alone.
SUBSET = [f for f in FIXTURES if f.name in DEFAULT]


# The size users get, read before the fixture below lowers it.
SHIPPED_MIN_WINDOWS = numerics.LAG_PRODUCTS_MIN_WINDOWS


@pytest.fixture(autouse=True)
def _lag_products_for_every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numerics, "LAG_PRODUCTS_MIN_WINDOWS", 0)


def _value_and_grad(fixture: Fixture, backend: str, *, double: bool):
    labels = fixture.name.startswith(LABELS)
    if backend == "jax":
        run = jax_label_value_and_grad if labels else jax_value_and_grad
    else:
        run = torch_label_value_and_grad if labels else torch_value_and_grad
    return run(fixture, double=double)


def test_maps_from_the_shipped_size_up_take_lag_products() -> None:
    # Radius 3 at spacing 1: an n x n map has (n - 2)^2 windows.
    side = math.isqrt(SHIPPED_MIN_WINDOWS) + 2
    assert math.isqrt(SHIPPED_MIN_WINDOWS) ** 2 == SHIPPED_MIN_WINDOWS
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numerics, "LAG_PRODUCTS_MIN_WINDOWS", SHIPPED_MIN_WINDOWS)
        box, spacing = (3, 3), (1, 1)
        assert numerics.uses_lag_products((side, side), box, spacing, weighted=False)
        assert not numerics.uses_lag_products((side - 1, side), box, spacing, weighted=False)
        assert not numerics.uses_lag_products((4 * side,) * 2, box, (2, 2), weighted=False)
        assert not numerics.uses_lag_products((4 * side,) * 2, box, spacing, weighted=True)
        # Volumes, however large, take region vectors.
        assert not numerics.uses_lag_products((side,) * 3, (3, 3, 3), (1, 1, 1), weighted=False)


def _count_lag_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each backend's lag-product call in the returned list."""
    calls = []

    def counted(name, original):
        def run(*args):
            calls.append(name)
            return original(*args)

        return run

    monkeypatch.setattr(
        rmi_jax._statistics, "_lag_log_det", counted("jax", rmi_jax._statistics._lag_log_det)
    )
    lag_function = rmi_torch._statistics._LagLogDet
    monkeypatch.setattr(lag_function, "apply", counted("torch", lag_function.apply))
    return calls


def _both_losses(fixture: Fixture) -> tuple[float, float]:
    pred, target = (jnp.asarray(a) for a in (fixture.pred, fixture.target))
    jax_value = rmi_jax.rmi_loss(pred, target, **fixture.options, channel_axis=1)
    pred, target = (torch.tensor(a) for a in (fixture.pred, fixture.target))
    torch_value = rmi_torch.rmi_loss(pred, target, **fixture.options, use_double_precision=True)
    return float(jax_value), torch_value.item()


@pytest.mark.parametrize("min_windows", [0, SHIPPED_MIN_WINDOWS], ids=["lowered", "shipped"])
def test_the_size_picks_the_route_in_both_backends(monkeypatch, min_windows: int) -> None:
    monkeypatch.setattr(numerics, "LAG_PRODUCTS_MIN_WINDOWS", min_windows)
    calls = _count_lag_calls(monkeypatch)
    fixture = next(f for f in FIXTURES if f.name == "dense-default-logits")  # 4x4 windows
    jax_value, torch_value = _both_losses(fixture)
    assert calls == (["jax", "torch"] if min_windows == 0 else [])
    np.testing.assert_allclose(jax_value, fixture.value, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)
    np.testing.assert_allclose(torch_value, fixture.value, rtol=F64_VALUE_RTOL, atol=0)


@pytest.mark.parametrize("fixture", SUBSET, ids=str)
def test_torch_float64_lag_products_match_reference(fixture: Fixture) -> None:
    value, grad = _value_and_grad(fixture, "torch", double=True)
    np.testing.assert_allclose(value, fixture.value, rtol=F64_VALUE_RTOL, atol=0)
    if fixture.grad_fd is not None:
        assert relative_error(grad, fixture.grad_fd) < FD_GRAD_RTOL


@pytest.mark.parametrize("fixture", SUBSET, ids=str)
def test_jax_float32_lag_products_match_reference(fixture: Fixture) -> None:
    value, grad = _value_and_grad(fixture, "jax", double=False)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, fixture.value, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)
    _, grad64 = _value_and_grad(fixture, "torch", double=True)
    assert relative_error(grad, grad64) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", ALL)
def test_jax_float64_lag_products_match_reference_and_torch(fixture: Fixture) -> None:
    with jax.enable_x64(True):
        value, grad = _value_and_grad(fixture, "jax", double=True)
    assert value.dtype == np.float64
    np.testing.assert_allclose(value, fixture.value, rtol=F64_VALUE_RTOL, atol=0)
    _, torch_grad = _value_and_grad(fixture, "torch", double=True)
    assert relative_error(grad, torch_grad) < CROSS_BACKEND_GRAD_RTOL
    if fixture.grad_fd is not None:
        assert relative_error(grad, fixture.grad_fd) < FD_GRAD_RTOL
