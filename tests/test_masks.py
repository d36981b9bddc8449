"""Masks (``valid_mask`` on the dense API, ``exclude_ignored`` on label maps), both backends.

The parity fixtures (``dense-mask-*``, ``labels-exclude-*``) hold the values to the reference;
these tests check what the semantics promise: a masked rectangle is the same as cropping to
it, masked values never matter, a window-free image is an error naming the mask, and JAX gives
the same answer with a traced mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rmi_jax
import rmi_torch
from parity_tests.tolerances import (
    F32_FEW_ROUNDINGS_RTOL,
    F32_GRAD_RTOL,
    F32_SAME_MATH_ATOL,
    F32_SAME_MATH_RTOL,
    F64_SAME_MATH_RTOL,
    relative_error,
)

SHAPE = (2, 3, 21, 18)  # NCHW
# Valid rows and columns per example; the crops start on a multiple of 2 and 3, so windows at
# step 2 (region extraction) line up with those of the cropped image.
CROPS = [(slice(6, 21), slice(0, 12)), (slice(0, 18), slice(6, 18))]


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pred = rng.standard_normal(SHAPE)
    target = (rng.random(SHAPE) < 0.4).astype(np.float64)
    mask = np.zeros((SHAPE[0], *SHAPE[2:]), bool)
    for n, (rows, cols) in enumerate(CROPS):
        mask[n, rows, cols] = True
    return pred, target, mask


def jax_loss(pred, target, **options):
    return np.asarray(rmi_jax.rmi_loss(jnp.asarray(pred), jnp.asarray(target), **options))


def jitted_jax_loss(pred, target, **options):
    """:func:`jax_loss` compiled: one compilation instead of op-by-op dispatch. Under jit a
    window-free mask gives NaN rather than an error (see the last tests), so the error tests
    call :func:`jax_loss`."""
    loss = jax.jit(lambda p, t: rmi_jax.rmi_loss(p, t, **options))
    return np.asarray(loss(jnp.asarray(pred), jnp.asarray(target)))


def torch_loss(pred, target, valid_mask=None, **options):
    mask = None if valid_mask is None else torch.tensor(valid_mask)
    return rmi_torch.rmi_loss(
        torch.tensor(pred), torch.tensor(target), valid_mask=mask, **options
    ).numpy()


BACKENDS = {
    "jax": lambda *a, **o: jitted_jax_loss(*a, channel_axis=1, **o),
    "torch": lambda *a, **o: torch_loss(*a, use_double_precision=False, **o),
}
CROP_OPTIONS = [
    {"stride": 1},
    {"stride": 2, "downsampling_method": "region-extraction"},
    {"stride": 1, "radius": 2, "bce_weight": 0.0, "with_logits": False},
]


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS.keys())
@pytest.mark.parametrize("options", CROP_OPTIONS, ids=str)
def test_masking_a_rectangle_equals_cropping_to_it(backend, options) -> None:
    pred, target, mask = inputs()
    options = {"with_logits": True, **options}
    if not options["with_logits"]:
        pred = 1.0 / (1.0 + np.exp(-pred))
    masked = backend(pred, target, valid_mask=mask, reduction="none", **options)
    for n, (rows, cols) in enumerate(CROPS):
        crop = (slice(n, n + 1), slice(None), rows, cols)
        cropped = backend(pred[crop], target[crop], reduction="none", **options)
        np.testing.assert_allclose(
            masked[n], cropped[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
        )


def test_all_true_mask_equals_no_mask() -> None:
    pred, target, mask = inputs()
    everything = np.ones_like(mask)
    for backend in BACKENDS.values():
        np.testing.assert_allclose(
            backend(pred, target, valid_mask=everything, with_logits=True),
            backend(pred, target, with_logits=True),
            rtol=F32_FEW_ROUNDINGS_RTOL,
        )


def test_masked_values_never_matter_jax() -> None:
    pred, target, mask = inputs()
    spoiled_pred = np.where(mask[:, None], pred, np.nan)
    spoiled_target = np.where(mask[:, None], target, np.inf)
    options = {"with_logits": True, "channel_axis": 1, "valid_mask": jnp.asarray(mask)}

    def loss(p, t):
        return rmi_jax.rmi_loss(p, t, **options)

    value, (grad_p, grad_t) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        jnp.asarray(spoiled_pred, jnp.float32), jnp.asarray(spoiled_target, jnp.float32)
    )
    clean = loss(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32))
    np.testing.assert_allclose(value, clean, rtol=F32_FEW_ROUNDINGS_RTOL)
    for grad in (grad_p, grad_t):
        assert np.isfinite(grad).all()
        assert not np.asarray(grad)[np.broadcast_to(~mask[:, None], SHAPE)].any()


def test_masked_values_never_matter_torch() -> None:
    pred, target, mask = inputs()
    spoiled_pred = torch.tensor(np.where(mask[:, None], pred, np.nan), requires_grad=True)
    spoiled_target = torch.tensor(np.where(mask[:, None], target, np.inf), requires_grad=True)
    value = rmi_torch.rmi_loss(
        spoiled_pred, spoiled_target, with_logits=True, valid_mask=torch.tensor(mask)
    )
    value.backward()
    # float64: the masked-out values never enter the arithmetic.
    np.testing.assert_allclose(
        value.item(), torch_loss(pred, target, mask, with_logits=True), rtol=F64_SAME_MATH_RTOL
    )
    for grad in (spoiled_pred.grad, spoiled_target.grad):
        assert torch.isfinite(grad).all()
        assert not grad.numpy()[np.broadcast_to(~mask[:, None], SHAPE)].any()


WINDOW_FREE = r"valid_mask leaves example\(s\) \[1\] without a region window"


def test_window_free_image_is_an_error_naming_the_mask() -> None:
    pred, target, mask = inputs()
    mask[1, :, 2:] = False  # two valid columns: no 3x3 window after max pooling by 3
    with pytest.raises(ValueError, match=WINDOW_FREE):
        jax_loss(pred, target, with_logits=True, channel_axis=1, valid_mask=mask)
    with pytest.raises(ValueError, match=WINDOW_FREE):
        torch_loss(pred, target, mask, with_logits=True)


def test_label_window_free_image_is_an_error_naming_labels() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 18, 18))
    labels = rng.integers(0, 3, (2, 18, 18))
    labels[0, 4:, :] = 255
    pattern = r"labels \(with exclude_ignored=True\) leaves example\(s\) \[0\]"
    with pytest.raises(ValueError, match=pattern):
        rmi_jax.rmi_loss_from_labels(
            logits, labels, num_classes=3, channel_axis=1, exclude_ignored=True
        )
    with pytest.raises(ValueError, match=pattern):
        rmi_torch.rmi_loss_from_labels(
            torch.tensor(logits), torch.tensor(labels), num_classes=3, exclude_ignored=True
        )
    # Without exclude_ignored the ignored pixels are zero points and the image is fine.
    value = rmi_torch.rmi_loss_from_labels(
        torch.tensor(logits), torch.tensor(labels), num_classes=3
    )
    assert torch.isfinite(value).item()


def test_jax_traced_mask_equals_concrete_mask() -> None:
    pred, target, mask = inputs()
    pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)

    def loss(p, m):
        return rmi_jax.rmi_loss(p, target, with_logits=True, channel_axis=1, valid_mask=m)

    eager = jax.value_and_grad(loss)(pred, jnp.asarray(mask))
    jitted = jax.jit(jax.value_and_grad(loss))(pred, jnp.asarray(mask))
    np.testing.assert_allclose(jitted[0], eager[0], rtol=F32_FEW_ROUNDINGS_RTOL)
    # Jit fuses the backward differently, so float32 rounding differs. Example 1 keeps 4 region
    # windows for 18-dimensional region vectors (J is eps-dominated) and its float32 gradient is
    # ~2e-5 from float64 (in norm) either way: both routes meet the float32 gradient bound, and
    # they are held to it rather than to each other's rounding.
    assert relative_error(jitted[1], eager[1]) < F32_GRAD_RTOL
    # vmap over a stack of masks: each slice as its own call.
    masks = jnp.stack([jnp.asarray(mask), jnp.ones_like(mask)])
    mapped = jax.vmap(loss, in_axes=(None, 0))(pred, masks)
    np.testing.assert_allclose(mapped, [loss(pred, m) for m in masks], rtol=F32_FEW_ROUNDINGS_RTOL)


def test_jax_traced_window_free_mask_gives_nan_not_an_exception() -> None:
    """Under jit the mask's values are unknown while tracing: documented NaN, not a crash."""
    pred, target, mask = inputs()
    mask[1] = False
    loss = jax.jit(
        lambda p, m: rmi_jax.rmi_loss(
            p, target, with_logits=True, channel_axis=1, valid_mask=m, reduction="none"
        )
    )
    per_example = np.asarray(loss(jnp.asarray(pred), jnp.asarray(mask)))
    assert np.isfinite(per_example[0]) and np.isnan(per_example[1])


MASK_ERRORS = [
    (
        "shape",
        np.ones((2, 21, 17), bool),
        ValueError,
        r"valid_mask must have the shape .*\(2, 21, 18\)",
    ),
    (
        "dtype",
        np.ones((2, 21, 18), np.float32),
        TypeError,
        r"valid_mask must have dtype bool, got float32",
    ),
]


@pytest.mark.parametrize(
    "mask, error, pattern", [c[1:] for c in MASK_ERRORS], ids=[c[0] for c in MASK_ERRORS]
)
def test_bad_mask_raises_clear_error(mask, error, pattern) -> None:
    pred, target, _ = inputs()
    with pytest.raises(error, match=pattern):
        jax_loss(pred, target, with_logits=True, channel_axis=1, valid_mask=mask)
    with pytest.raises(error, match=pattern):
        torch_loss(pred, target, mask, with_logits=True)
