"""``torch.compile`` of both PyTorch modules gives the eager values and gradients, and leaves the
caller's matmul precision as it was (the statistics switch it inside the compiled code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rmi_torch
from parity_tests.tolerances import F32_SAME_MATH_ATOL, F32_SAME_MATH_RTOL, relative_error

# Compiling takes about a minute per module on two cores.
pytestmark = pytest.mark.full

RNG = np.random.default_rng(31)
LOGITS = RNG.standard_normal((2, 3, 32, 30)).astype(np.float32)
TARGET = (RNG.random(LOGITS.shape) < 0.4).astype(np.float32)
LABELS = RNG.integers(0, 3, (2, 32, 30))


def value_and_grad(loss, second):
    x = torch.tensor(LOGITS, requires_grad=True)
    value = loss(x, second)
    value.backward()
    return float(value.detach()), x.grad


@pytest.mark.parametrize(
    "module, second",
    [
        (rmi_torch.RMILoss(with_logits=True, use_double_precision=False), torch.tensor(TARGET)),
        (
            rmi_torch.LabelRMILoss(num_classes=3, rmi_pool_way=2, use_double_precision=False),
            torch.tensor(LABELS),
        ),
    ],
    ids=["dense", "labels"],
)
def test_compiled_module_equals_eager(module, second) -> None:
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        eager = value_and_grad(module, second)
        compiled = value_and_grad(torch.compile(module), second)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved)
    np.testing.assert_allclose(
        compiled[0], eager[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
    )
    assert relative_error(compiled[1], eager[1]) < F32_SAME_MATH_RTOL
