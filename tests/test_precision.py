"""rmi_torch keeps its float32 accuracy whatever the caller's global matmul settings.

``torch.set_float32_matmul_precision("high"/"medium")`` (which PyTorch Lightning recommends) lets
float32 products run in TF32 on NVIDIA GPUs and in bfloat16 on CPUs with AMX/AVX512-BF16; the
statistics switch to full precision for their duration and restore the caller's settings.

The tensors are made on ``RMI_TEST_DEVICE`` (``parity_tests/backends.py``; ``cuda`` for the GPU).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import rmi_torch
import rmi_torch._statistics
from parity_tests.backends import TORCH_DEVICE, torch_value_and_grad
from parity_tests.fixtures import load_fixtures
from parity_tests.tolerances import (
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    f32_grad_rtol,
    relative_error,
)

FIXTURES = load_fixtures()
# A float32 product is "exact" here when it is as close to float64 as full float32 rounding of a
# 256-term dot product can be; bfloat16 products (8-bit mantissa) miss it by four orders.
EXACT_PRODUCT_RTOL = 1e-5


def _product_error(precision: str) -> float:
    """Relative error of a float32 Gram matrix under ``precision``, against float64."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        a = torch.randn(18, 256, generator=torch.Generator().manual_seed(0)).to(TORCH_DEVICE)
        product = (a @ a.mT).double()
    finally:
        torch.set_float32_matmul_precision(saved)
    exact = a.double() @ a.double().mT
    return float((product - exact).norm() / exact.norm())


def _settings() -> tuple:
    """The float32 precision settings users set and the statistics override, on any release."""
    switches = rmi_torch._statistics._MATMUL_SWITCHES
    return (torch.get_float32_matmul_precision(), *(getattr(o, n) for o, n, _ in switches))


def _at_full_precision(settings: tuple) -> bool:
    switches = rmi_torch._statistics._MATMUL_SWITCHES
    return list(settings[1:]) == [full for _, _, full in switches]


@pytest.fixture
def matmul_precision(request):
    """Set ``torch.set_float32_matmul_precision`` for one test, then restore the default."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param)
    yield request.param
    torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize("matmul_precision", ["high", "medium"], indirect=True)
@pytest.mark.parametrize("fixture", FIXTURES[::3], ids=str)
def test_float32_bounds_hold_under_reduced_matmul_precision(matmul_precision, fixture) -> None:
    error = _product_error(matmul_precision)
    if error < EXACT_PRODUCT_RTOL:
        pytest.skip(
            f"this machine runs float32 products at float32 accuracy under {matmul_precision!r} "
            f"(probe error {error:.1e}; a bfloat16 kernel gives ~1e-3), so the setting cannot "
            "corrupt anything here; test_statistics_run_at_full_precision_and_restore_the_settings "
            "still checks that the statistics switch to full precision"
        )
    value, grad = torch_value_and_grad(fixture, double=False)
    np.testing.assert_allclose(value, fixture.value, rtol=F32_VALUE_RTOL, atol=F32_VALUE_ATOL)
    torch.set_float32_matmul_precision("highest")
    _, grad64 = torch_value_and_grad(fixture, double=True)
    assert relative_error(grad, grad64) < f32_grad_rtol(fixture)


@pytest.mark.parametrize("matmul_precision", ["highest", "high", "medium"], indirect=True)
def test_statistics_run_at_full_precision_and_restore_the_settings(matmul_precision) -> None:
    before = _settings()
    seen = []
    original = rmi_torch._statistics._upper_cholesky  # every route factors a Gram matrix

    def spy(gram):
        seen.append(_settings())
        return original(gram)

    x = torch.randn(2, 3, 24, 24, device=TORCH_DEVICE, requires_grad=True)
    target = (torch.rand(2, 3, 24, 24, device=TORCH_DEVICE) > 0.5).float()
    try:
        rmi_torch._statistics._upper_cholesky = spy
        loss = rmi_torch.rmi_loss(x, target, with_logits=True, use_double_precision=False)
        loss.backward()
    finally:
        rmi_torch._statistics._upper_cholesky = original
    assert seen and all(map(_at_full_precision, seen))
    assert _settings() == before


def test_settings_are_restored_when_the_statistics_raise(monkeypatch) -> None:
    torch.set_float32_matmul_precision("medium")
    try:
        before = _settings()

        def fail(gram):
            raise RuntimeError("inside the statistics")

        monkeypatch.setattr(rmi_torch._statistics, "_upper_cholesky", fail)
        with pytest.raises(RuntimeError, match="inside the statistics"):
            rmi_torch.rmi_loss(
                torch.randn(1, 1, 12, 12, device=TORCH_DEVICE),
                torch.zeros(1, 1, 12, 12, device=TORCH_DEVICE),
                with_logits=True,
            )
        assert _settings() == before
    finally:
        torch.set_float32_matmul_precision("highest")


def test_concurrent_calls_restore_the_callers_settings() -> None:
    torch.set_float32_matmul_precision("medium")
    try:
        before = _settings()
        x = torch.randn(2, 3, 48, 48, device=TORCH_DEVICE)
        target = (torch.rand(2, 3, 48, 48, device=TORCH_DEVICE) > 0.5).float()
        errors = []

        def work():
            try:
                for _ in range(5):
                    rmi_torch.rmi_loss(x, target, with_logits=True, use_double_precision=False)
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert _settings() == before
        assert rmi_torch._statistics._precision_users == 0
    finally:
        torch.set_float32_matmul_precision("highest")
