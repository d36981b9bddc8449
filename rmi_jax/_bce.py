"""The binary cross-entropy term, averaged per example."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# PyTorch clamps each log term of binary_cross_entropy at -100 (so p = 0 or 1 stays finite).
_LOG_CLAMP = -100.0
# PyTorch's binary_cross_entropy backward divides by max(p (1 - p), 1e-12).
_GRAD_DENOMINATOR_FLOOR = 1e-12


def _floor(x: jnp.ndarray, floor: float) -> jnp.ndarray:
    """``max(x, floor)`` whose derivative is 1 at ``x == floor`` too: written out, so that no
    framework's tie convention enters the (second-order) gradient."""
    return jnp.where(x < floor, floor, x)


def _clamped_log(x: jnp.ndarray) -> jnp.ndarray:
    safe = jnp.where(x > 0, x, 1.0)
    return jnp.where(x > 0, _floor(jnp.log(safe), _LOG_CLAMP), _LOG_CLAMP)


@jax.custom_jvp
def _bce_probabilities(p: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    return -(y * _clamped_log(p) + (1.0 - y) * _clamped_log(1.0 - p))


@_bce_probabilities.defjvp
def _bce_probabilities_jvp(primals, tangents):
    # PyTorch's derivative, so gradients agree across backends even where p (1 - p) underflows.
    p, y = primals
    dp, dy = tangents
    log_p, log_q = _clamped_log(p), _clamped_log(1.0 - p)
    value = -(y * log_p + (1.0 - y) * log_q)
    d_p = (p - y) / _floor(p * (1.0 - p), _GRAD_DENOMINATOR_FLOOR)
    return value, d_p * dp + (log_q - log_p) * dy


@jax.custom_vjp
def _bce_logits(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    return jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _bce_logits_fwd(x, y):
    # Keep only the inputs: autodiff would keep a full-size exp(-|x|) from the forward pass,
    # while the backward can recompute what it needs in the same fused pass.
    return _bce_logits(x, y), (x, y)


def _bce_logits_bwd(residuals, cotangent):
    x, y = residuals
    return cotangent * (jax.nn.sigmoid(x) - y), cotangent * -x


_bce_logits.defvjp(_bce_logits_fwd, _bce_logits_bwd)


def bce_per_example(
    pred: jnp.ndarray, target: jnp.ndarray, with_logits: bool, mask: jnp.ndarray | None = None
) -> jnp.ndarray:
    """Mean elementwise BCE over all but the leading (batch) axis: ``[N, ...] -> [N]``.

    With a boolean ``mask`` (broadcastable to ``pred``) the mean is over its true entries only.
    """
    elementwise = (_bce_logits if with_logits else _bce_probabilities)(pred, target)
    batch = elementwise.shape[0]
    if mask is None:
        return elementwise.reshape(batch, -1).mean(axis=-1)
    mask = jnp.broadcast_to(mask, elementwise.shape).reshape(batch, -1)
    summed = jnp.where(mask, elementwise.reshape(batch, -1), 0.0).sum(axis=-1)
    # Counted in integers: a float32 count stops being exact at 2**24 elements.
    return summed / jnp.count_nonzero(mask, axis=-1).astype(summed.dtype)


def label_bce(logits: jnp.ndarray, target: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """BCE with logits summed over valid pixels and all classes, over ``valid pixels + 1``.

    ``[N, C, H, W]`` logits and target, ``[N, H, W]`` boolean ``valid``; one number for the
    whole batch, as in the authors' code (the ``+ 1`` keeps an all-ignored batch finite).
    """
    elementwise = _bce_logits(logits, target) * valid[:, None]
    # Counted in integers: a float32 count stops being exact at 2**24 pixels.
    return elementwise.sum() / (jnp.count_nonzero(valid) + 1).astype(logits.dtype)
