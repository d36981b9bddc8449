"""rmi_jax's pooling against PyTorch's, ties included: the value and where the gradient goes, on
images and on volumes with per-axis strides."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rmi_jax._windows import downsample

# Small integer values make ties in almost every window, so "first maximum" is exercised.
# The middle shape is in the full tier.
SHAPES = [(2, 3, 7, 5), pytest.param((1, 2, 16, 13), marks=pytest.mark.full), (1, 1, 40, 37)]
# Max pooling and its gradient copy values, so they agree exactly; average pooling may sum the
# window in another order, which moves a float32 result by a few rounding units.
RTOL = 1e-6
ATOL = 1e-7


def _torch_pool(x: torch.Tensor, method: str, stride: tuple[int, ...]) -> torch.Tensor:
    pools = {2: (F.max_pool2d, F.avg_pool2d), 3: (F.max_pool3d, F.avg_pool3d)}[len(stride)]
    pool = pools[0] if method == "max" else pools[1]
    return pool(x, kernel_size=stride, stride=stride, padding=tuple(s // 2 for s in stride))


def _check_against_torch(method: str, shape, stride: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, shape).astype(np.float32)
    pooled, pullback = jax.vjp(lambda a: downsample(a, method, stride), jnp.asarray(x))
    cotangent = rng.standard_normal(pooled.shape).astype(np.float32)
    (grad,) = pullback(jnp.asarray(cotangent))

    x_torch = torch.tensor(x, requires_grad=True)
    pooled_torch = _torch_pool(x_torch, method, stride)
    pooled_torch.backward(torch.tensor(cotangent))
    np.testing.assert_allclose(
        np.asarray(pooled), pooled_torch.detach().numpy(), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(np.asarray(grad), x_torch.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("method", ["max", "avg"])
@pytest.mark.parametrize("shape", SHAPES)
# Strides up to 13: windows of more than 127 pixels (above 11) once needed a wider position type.
# 12 is the first such stride; 4, 5, 11 and 13 are in the full tier.
@pytest.mark.parametrize(
    "stride",
    [2, 3, 12, *(pytest.param(stride, marks=pytest.mark.full) for stride in (4, 5, 11, 13))],
)
def test_pooling_matches_torch_with_ties(method: str, shape, stride: int) -> None:
    _check_against_torch(method, shape, (stride, stride), seed=stride)


@pytest.mark.parametrize("method", ["max", "avg"])
# Cubic, anisotropic (a thick-slice axis pooled less), one axis unpooled, odd sizes.
@pytest.mark.parametrize("stride", [(2, 2, 2), (1, 3, 3), (3, 1, 2), (2, 4, 3)])
def test_volume_pooling_matches_torch_with_ties(method: str, stride) -> None:
    _check_against_torch(method, (2, 2, 7, 9, 10), stride, seed=sum(stride))
