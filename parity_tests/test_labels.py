"""Label-map RMI (docs/semantics.md#label-maps) of both backends vs the NumPy reference, on the
``labels-*`` fixtures (the default tier: on the covering subset of ``tiers.py``).

Runs with JAX's x64 off, as JAX users do by default; the float64 JAX checks live in
``x64/test_labels_x64.py``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests.backends import (
    jax_label_value_and_grad,
    torch_label_value_and_grad,
    torch_tensor,
)
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tiers import DEFAULT_EAGER, DEFAULT_EQUIVALENCE, DEFAULT_LABELS, tiered
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
ALL = tiered(FIXTURES, DEFAULT_LABELS)
ALL_WITH_FD = tiered(WITH_FD, DEFAULT_LABELS)
EQUIVALENCE = tiered(FIXTURES, DEFAULT_EQUIVALENCE)


def assert_f32_value(value: np.ndarray, fixture: Fixture) -> None:
    np.testing.assert_allclose(value, fixture.value, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)


@pytest.mark.parametrize("fixture", ALL)
def test_torch_float64_value_matches_reference(fixture: Fixture) -> None:
    value, grad = torch_label_value_and_grad(fixture, double=True)
    assert value.dtype == np.float64 and value.shape == ()
    np.testing.assert_allclose(value, fixture.value, rtol=F64_VALUE_RTOL, atol=0)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fixture", ALL_WITH_FD)
def test_torch_float64_gradient_matches_finite_differences(fixture: Fixture) -> None:
    _, grad = torch_label_value_and_grad(fixture, double=True)
    assert relative_error(grad, fixture.grad_fd) < FD_GRAD_RTOL


@pytest.mark.parametrize("fixture", ALL)
def test_torch_float32_route_matches_reference(fixture: Fixture) -> None:
    value, grad = torch_label_value_and_grad(fixture, double=False)
    assert value.dtype == np.float32
    assert_f32_value(value, fixture)
    _, grad64 = torch_label_value_and_grad(fixture, double=True)
    assert relative_error(grad, grad64) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", FIXTURES[::4], ids=str)
def test_torch_float32_logits_with_double_statistics(fixture: Fixture) -> None:
    # The authors' setting: float32 network output, float64 statistics, a float64 loss.
    value, _ = torch_label_value_and_grad(fixture, double=False, use_double_precision=True)
    assert value.dtype == np.float64
    assert_f32_value(value, fixture)


@pytest.mark.parametrize("fixture", ALL)
def test_jax_float32_value_matches_reference(fixture: Fixture) -> None:
    value, grad = jax_label_value_and_grad(fixture, double=False)
    assert value.dtype == np.float32 and value.shape == ()
    assert_f32_value(value, fixture)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fixture", ALL_WITH_FD)
def test_jax_float32_gradient_matches_finite_differences(fixture: Fixture) -> None:
    _, grad = jax_label_value_and_grad(fixture, double=False)
    assert relative_error(grad, fixture.grad_fd) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", ALL)
def test_jax_float32_gradient_matches_torch_float64(fixture: Fixture) -> None:
    _, grad = jax_label_value_and_grad(fixture, double=False)
    _, grad64 = torch_label_value_and_grad(fixture, double=True)
    assert relative_error(grad, grad64) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", EQUIVALENCE)
def test_jax_nhwc_equals_nchw(fixture: Fixture) -> None:
    nchw = jax_label_value_and_grad(fixture, double=False, channel_axis=1)
    nhwc = jax_label_value_and_grad(fixture, double=False, channel_axis=-1)
    np.testing.assert_allclose(nhwc[0], nchw[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL)
    # Reassociated float32 sums reach the gradient through the statistics, which amplify them
    # like any float32 rounding: the float32 gradient bound, not the same-math one.
    assert relative_error(nhwc[1], nchw[1]) < f32_grad_rtol(fixture)


# One fixture per pool way (eager dispatch costs seconds per fixture); one in the default tier.
EAGER = tiered(
    [f for f in FIXTURES if f.name in ("labels-default", "labels-avg", "labels-interp")],
    DEFAULT_EAGER,
)


@pytest.mark.parametrize("fixture", EAGER)
def test_jax_jit_equals_eager(fixture: Fixture) -> None:
    eager = jax_label_value_and_grad(fixture, double=False, jit=False)
    jitted = jax_label_value_and_grad(fixture, double=False)
    np.testing.assert_allclose(
        jitted[0], eager[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
    )
    # As in the layout test (measured: 4e-5 on labels-interp, whose float32 gradients are each
    # 3e-5 from float64).
    assert relative_error(jitted[1], eager[1]) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("fixture", FIXTURES[::4], ids=str)
def test_torch_module_equals_functional(fixture: Fixture) -> None:
    logits, labels = torch_tensor(fixture.pred), torch_tensor(fixture.target)
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
