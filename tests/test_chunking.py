"""The statistics run a cache-sized chunk of (example, class) maps at a time in both backends.

The parity fixtures are small enough to fit one chunk, so here the chunk size is forced down to
four of six maps, and the loss and its gradient must equal those of the one-chunk run: with a
mask, whose window weights (one set per example) are sliced per chunk too, and with an all-true
mask. The first chunk holds all of example 0 and one class of example 1, and the masks of the
two differ. (Without a mask the statistics are lag products, which need no chunks.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rmi_jax
import rmi_torch
import rmi_torch._statistics
from parity_tests.tolerances import (
    F32_SAME_MATH_ATOL,
    F32_SAME_MATH_RTOL,
    F64_SAME_MATH_RTOL,
    relative_error,
)
from rmi_core import numerics

SHAPE = (2, 3, 24, 24)  # NCHW: six maps, chunks of four and two
MAPS_PER_CHUNK = 4
RADIUS = 3
# Pooled maps are 8 x 8 (stride 3), so each map has 6 x 6 windows.
BYTES_PER_MAP = {torch.float64: 2 * RADIUS**2 * 36 * 8, jnp.float32: 2 * RADIUS**2 * 36 * 4}


def inputs(masked: bool):
    rng = np.random.default_rng(7)
    pred = rng.standard_normal(SHAPE)
    target = (rng.random(SHAPE) < 0.4).astype(np.float64)
    mask = np.ones((SHAPE[0], *SHAPE[2:]), bool)
    if masked:
        mask[0, :6, :] = False  # leaves 3 x 6 of the 6 x 6 windows whole
        mask[1, :, -9:] = False  # leaves 6 x 3 of them
    return pred, target, mask


def torch_value_and_grad(pred, target, mask):
    x = torch.tensor(pred, requires_grad=True)
    loss = rmi_torch.rmi_loss(
        x, torch.tensor(target), with_logits=True, valid_mask=torch.tensor(mask)
    )
    loss.backward()
    return loss.item(), x.grad.numpy()


def jax_value_and_grad(pred, target, mask):
    def loss(x):
        return rmi_jax.rmi_loss(
            x,
            jnp.asarray(target, jnp.float32),
            with_logits=True,
            channel_axis=1,
            valid_mask=jnp.asarray(mask),
        )

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(pred, jnp.float32))
    return float(value), np.asarray(grad)


@pytest.mark.parametrize("masked", [False, True])
def test_torch_chunks_equal_one_chunk(monkeypatch, masked: bool) -> None:
    pred, target, mask = inputs(masked)
    whole = torch_value_and_grad(pred, target, mask)
    chunk_bytes = MAPS_PER_CHUNK * BYTES_PER_MAP[torch.float64]
    monkeypatch.setitem(numerics.CHUNK_BYTES, "cpu", chunk_bytes)
    maps = torch.zeros(6, 8, 8)
    box, spacing = (RADIUS, RADIUS), (1, 1)
    assert rmi_torch._statistics._chunks(maps, box, spacing, torch.float64) == [
        slice(0, 4),
        slice(4, 8),
    ]
    chunked = torch_value_and_grad(pred, target, mask)
    # float64 statistics: the same arithmetic per map, so rounding only.
    assert relative_error(chunked[0], whole[0]) < F64_SAME_MATH_RTOL
    assert relative_error(chunked[1], whole[1]) < F64_SAME_MATH_RTOL


@pytest.mark.parametrize("masked", [False, True])
def test_jax_chunks_equal_one_chunk(monkeypatch, masked: bool) -> None:
    pred, target, mask = inputs(masked)
    whole = jax_value_and_grad(pred, target, mask)
    chunk_bytes = MAPS_PER_CHUNK * BYTES_PER_MAP[jnp.float32]
    monkeypatch.setitem(numerics.CHUNK_BYTES, "cpu", chunk_bytes)
    assert numerics.maps_per_chunk(6, 36, RADIUS**2, 4, chunk_bytes) == MAPS_PER_CHUNK
    chunked = jax_value_and_grad(pred, target, mask)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=F32_SAME_MATH_RTOL)
    np.testing.assert_allclose(
        chunked[1], whole[1], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
    )
