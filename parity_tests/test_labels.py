"""Label-map RMI (docs/semantics.md#label-maps) of both backends vs the NumPy reference, on the
``labels-*`` fixtures.

Runs with JAX's x64 off, as JAX users do by default; the float64 JAX checks live in
``x64/test_labels_x64.py``. The two ``*_label_value_and_grad`` helpers are shared with it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tolerances import (
    F32_SAME_MATH_ATOL,
    F32_SAME_MATH_RTOL,
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    F64_VALUE_RTOL,
    FD_GRAD_RTOL,
    f32_grad_rtol,
    relative_error,
)
from rmi_jax import rmi_loss_from_labels as jax_loss
from rmi_torch import LabelRMILoss
from rmi_torch import rmi_loss_from_labels as torch_loss

FIXTURES = load_fixtures("labels-*.npz")
WITH_FD = [f for f in FIXTURES if f.grad_fd is not None]


def jax_label_value_and_grad(
    fixture: Fixture, *, double: bool, channel_axis: int = 1, jit: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Value and gradient w.r.t. the NCHW logits from JAX (float64 needs x64).

    Memoised per fixture and arguments: several tests check the same JAX result, and each
    fixture's shapes cost a compilation (jitted) or many small ones (eager).
    """
    return _jax_label_value_and_grad(fixture.name, double, channel_axis, jit)


@functools.cache
def _jax_label_value_and_grad(
    name: str, double: bool, channel_axis: int, jit: bool
) -> tuple[np.ndarray, np.ndarray]:
    fixture = load_fixtures(f"{name}.npz")[0]
    logits = jnp.asarray(fixture.pred, jnp.float64 if double else jnp.float32)
    labels = jnp.asarray(fixture.target)

    def loss(x):
        if channel_axis != 1:
            x = jnp.moveaxis(x, 1, channel_axis)
        return jax_loss(x, labels, **fixture.options, channel_axis=channel_axis)

    value_and_grad = jax.value_and_grad(loss)
    value, grad = (jax.jit(value_and_grad) if jit else value_and_grad)(logits)
    return np.asarray(value), np.asarray(grad)


def torch_label_value_and_grad(
    fixture: Fixture, *, double: bool, use_double_precision: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Value and gradient w.r.t. the logits from torch; float64 statistics when ``double``
    unless ``use_double_precision`` says otherwise."""
    logits = torch.tensor(fixture.pred, dtype=torch.float64 if double else torch.float32)
    logits.requires_grad_(True)
    if use_double_precision is None:
        use_double_precision = double
    value = torch_loss(
        logits,
        torch.tensor(fixture.target),
        **fixture.options,
        use_double_precision=use_double_precision,
    )
    value.backward()
    return value.detach().numpy(), logits.grad.numpy()


def ids(fixtures: list[Fixture]) -> list[str]:
    return [f.name for f in fixtures]


def assert_f32_value(value: np.ndarray, fixture: Fixture) -> None:
    np.testing.assert_allclose(value, fixture.value, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids(FIXTURES))
def test_torch_float64_value_matches_reference(fixture: Fixture) -> None:
    value, grad = torch_label_value_and_grad(fixture, double=True)
    assert value.dtype == np.float64 and value.shape == ()
    np.testing.assert_allclose(value, fixture.value, rtol=F64_VALUE_RTOL, atol=0)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fixture", WITH_FD, ids=ids(WITH_FD))
def test_torch_float64_gradient_matches_finite_differences(fixture: Fixture) -> None:
    _, grad = torch_label_value_and_grad(fixture, double=True)
    assert relative_error(grad, fixture.grad_fd) < FD_GRAD_RTOL


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids(FIXTURES))
def test_torch_float32_route_matches_reference(fixture: Fixture) -> None:
    value, grad = torch_label_value_and_grad(fixture, double=False)
    assert value.dtype == np.float32
    assert_f32_value(value, fixture)
    _, grad64 = torch_label_value_and_grad(fixture, double=True)
    assert relative_error(grad, grad64) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", FIXTURES[::4], ids=ids(FIXTURES[::4]))
def test_torch_float32_logits_with_double_statistics(fixture: Fixture) -> None:
    # The authors' setting: float32 network output, float64 statistics, a float64 loss.
    value, _ = torch_label_value_and_grad(fixture, double=False, use_double_precision=True)
    assert value.dtype == np.float64
    assert_f32_value(value, fixture)


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids(FIXTURES))
def test_jax_float32_value_matches_reference(fixture: Fixture) -> None:
    value, grad = jax_label_value_and_grad(fixture, double=False)
    assert value.dtype == np.float32 and value.shape == ()
    assert_f32_value(value, fixture)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fixture", WITH_FD, ids=ids(WITH_FD))
def test_jax_float32_gradient_matches_finite_differences(fixture: Fixture) -> None:
    _, grad = jax_label_value_and_grad(fixture, double=False)
    assert relative_error(grad, fixture.grad_fd) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids(FIXTURES))
def test_jax_float32_gradient_matches_torch_float64(fixture: Fixture) -> None:
    _, grad = jax_label_value_and_grad(fixture, double=False)
    _, grad64 = torch_label_value_and_grad(fixture, double=True)
    assert relative_error(grad, grad64) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids(FIXTURES))
def test_jax_nhwc_equals_nchw(fixture: Fixture) -> None:
    nchw = jax_label_value_and_grad(fixture, double=False, channel_axis=1)
    nhwc = jax_label_value_and_grad(fixture, double=False, channel_axis=-1)
    np.testing.assert_allclose(nhwc[0], nchw[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL)
    # Reassociated float32 sums reach the gradient through the statistics, which amplify them
    # like any float32 rounding: the float32 gradient bound, not the same-math one.
    assert relative_error(nhwc[1], nchw[1]) < f32_grad_rtol(fixture)


# One fixture per pool way: eager dispatch costs seconds per fixture.
EAGER = [f for f in FIXTURES if f.name in ("labels-default", "labels-avg", "labels-interp")]


@pytest.mark.parametrize("fixture", EAGER, ids=ids(EAGER))
def test_jax_jit_equals_eager(fixture: Fixture) -> None:
    eager = jax_label_value_and_grad(fixture, double=False, jit=False)
    jitted = jax_label_value_and_grad(fixture, double=False)
    np.testing.assert_allclose(
        jitted[0], eager[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
    )
    # As in the layout test (measured: 4e-5 on labels-interp, whose float32 gradients are each
    # 3e-5 from float64).
    assert relative_error(jitted[1], eager[1]) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", FIXTURES[::4], ids=ids(FIXTURES[::4]))
def test_torch_module_equals_functional(fixture: Fixture) -> None:
    logits, labels = torch.tensor(fixture.pred), torch.tensor(fixture.target)
    module = LabelRMILoss(**fixture.options)
    assert torch.equal(module(logits, labels), torch_loss(logits, labels, **fixture.options))


LABEL_DTYPES = ["uint8", "int16", "int32", "int64"]
DTYPE_FIXTURE = next(f for f in FIXTURES if f.name == "labels-many-ignored")


@pytest.mark.parametrize("dtype", LABEL_DTYPES)
def test_any_integer_label_dtype_gives_the_same_loss(dtype: str) -> None:
    # 255 (ignored) fits uint8; labels >= num_classes stay below it in the fixture.
    labels = DTYPE_FIXTURE.target.astype(dtype)
    options = DTYPE_FIXTURE.options
    logits64 = torch.tensor(DTYPE_FIXTURE.pred)
    value = torch_loss(logits64, torch.tensor(labels), **options)
    np.testing.assert_allclose(value.item(), DTYPE_FIXTURE.value, rtol=F64_VALUE_RTOL, atol=0)
    jax_value = jax_loss(
        jnp.asarray(DTYPE_FIXTURE.pred, jnp.float32), jnp.asarray(labels), **options, channel_axis=1
    )
    assert_f32_value(np.asarray(jax_value), DTYPE_FIXTURE)


def test_jax_half_precision_logits_give_a_float32_loss() -> None:
    fixture = FIXTURES[0]
    logits = jnp.asarray(fixture.pred, jnp.bfloat16)
    value = jax_loss(logits, jnp.asarray(fixture.target), **fixture.options, channel_axis=1)
    assert value.dtype == jnp.float32
    # bfloat16 logits carry ~3 significant digits; the loss follows them, no more.
    np.testing.assert_allclose(value, fixture.value, rtol=1e-2, atol=1e-2)


def test_fixtures_cover_the_label_options() -> None:
    seen: dict[str, set] = {}
    for fixture in FIXTURES:
        for key, value in fixture.options.items():
            seen.setdefault(key, set()).add(value)
    assert {1, 2, 4} <= seen["rmi_radius"]
    assert {1, 2} <= seen["rmi_pool_way"]
    assert {1, 2, 4} <= seen["rmi_pool_stride"]
    assert {0.0, 1.0} <= seen["loss_weight_lambda"]
    assert {0} <= seen["lambda_way"]
    assert 1 in seen["num_classes"]
    ignored = [f for f in FIXTURES if (f.target >= f.options["num_classes"]).any()]
    assert len(ignored) >= len(FIXTURES) // 2
    assert len(WITH_FD) >= 8
