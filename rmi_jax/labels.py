"""RMI loss from integer label maps: the paper authors' semantics (SPEC §2), and its validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rmi_jax._bce import _bce_logits
from rmi_jax._windows import map_size_after_downsampling, minimum_input_size
from rmi_jax.api import (
    CHOLESKY_LOG_OFFSET,
    _require_bool,
    _require_int,
    _require_real,
    _rmi_lower_bound,
    check_prediction,
    masked_window_weights,
)

# What each ``rmi_pool_way`` does, and the dense semantics' name for the two poolings.
POOL_WAYS = {0: "max pooling", 1: "average pooling", 2: "interpolation"}
_POOLING_METHODS = {0: "max", 1: "avg"}
LAMBDA_WAYS = {0: "BCE + lambda * RMI", 1: "lambda * BCE + (1 - lambda) * RMI"}
# The authors' code adds this to every probability (an offset, not a clamp) and fixes epsilon.
PROBABILITY_OFFSET = 1e-6
EPSILON = 5e-4
# ignore_index may be any label value, negative ones included (labels are at most int64).
_SMALLEST_LABEL = -(2**63)


def rmi_loss_from_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    rmi_radius: int = 3,
    rmi_pool_way: int = 0,
    rmi_pool_size: int = 3,
    rmi_pool_stride: int = 3,
    loss_weight_lambda: float = 0.5,
    lambda_way: int = 1,
    ignore_index: int = 255,
    channel_axis: int = -1,
    exclude_ignored: bool = False,
) -> jax.Array:
    r"""RMI loss of logits against an integer label map, as in the RMI paper authors' code.

    Pixels whose label is ``ignore_index``, ``>= num_classes`` or negative are ignored. With
    :math:`v` the valid mask, :math:`y` the one-hot target of the valid labels (zero at ignored
    pixels) and :math:`V = \sum v` over the whole batch,

    .. math::
        \mathrm{BCE} = \frac{1}{V + 1} \sum_{n,c,h,w} v \, \mathrm{bce}(x, y), \qquad
        \mathrm{RMI} = \sum_c \frac{1}{N} \sum_n \frac{1}{2d} \log\det(M_{nc} + \epsilon I),

    where :math:`M_{nc}` is the posterior covariance of the ``R x R`` region vectors of the
    downsampled target and probabilities :math:`\sigma(x) v + 10^{-6}` (see
    :func:`rmi_jax.rmi_loss`), :math:`d = R^2` and :math:`\epsilon = 5 \cdot 10^{-4}`. The loss is
    :math:`\lambda \mathrm{BCE} + (1 - \lambda) \mathrm{RMI}` (``lambda_way=1``) or
    :math:`\mathrm{BCE} + \lambda \mathrm{RMI}` (``lambda_way=0``). Ignored pixels still count
    as points of the region statistics, as in the authors' code, unless ``exclude_ignored``.
    The value can be negative.

    Args:
      logits: ``[N, H, W, C]`` by default (``[N, C, H, W]`` with ``channel_axis=1``); any
        floating dtype, bfloat16 and float16 computed in float32.
      labels: integer class indices, ``[N, H, W]``.
      num_classes: number of classes ``C``; must equal the channel count of ``logits``.
      rmi_radius: side ``R`` of the square regions.
      rmi_pool_way: downsampling before the regions: 0 max pooling, 1 average pooling (kernel =
        stride = ``rmi_pool_stride``, padding ``stride // 2``, padded zeros counted), 2 resize to
        ``(H // stride, W // stride)``, nearest for the target and bilinear with aligned corners
        for the probabilities.
      rmi_pool_size: the pooling kernel; must equal ``rmi_pool_stride``.
      rmi_pool_stride: downsampling factor; 1 disables downsampling.
      loss_weight_lambda: :math:`\lambda` in ``[0, 1]``.
      lambda_way: how :math:`\lambda` combines the two terms (1 or 0, see above).
      ignore_index: a label value to ignore besides those outside ``[0, num_classes)``.
      channel_axis: axis of ``logits`` holding the classes (``-1`` NHWC, ``1`` NCHW).
      exclude_ignored: leave out of the statistics every region window that touches an ignored
        pixel (after downsampling: a cell is ignored if any pixel it is pooled or resized from
        is), instead of counting ignored pixels as zero points; centring and covariances use
        the remaining windows. Each example needs one such window: checked (``ValueError``)
        for concrete labels; traced labels (under ``jit``) without one give NaN.

    Returns:
      The scalar loss: float32, or float64 for float64 logits (the dtype of the statistics).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rmi_jax import rmi_loss_from_labels
      >>> logits = jax.random.normal(jax.random.key(0), (2, 32, 32, 5))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 32, 32), 0, 5)
      >>> labels = labels.at[:, :4].set(255)  # ignored pixels
      >>> loss = lambda x: rmi_loss_from_labels(x, labels, num_classes=5, rmi_pool_way=1)
      >>> value, grad = jax.value_and_grad(loss)(logits)
      >>> value.shape, grad.shape
      ((), (2, 32, 32, 5))

    References:
      Zhao, Cai, Xu, Yang, He. "Region Mutual Information Loss for Semantic Segmentation",
      NeurIPS 2019. https://arxiv.org/abs/1910.12037 (code: github.com/ZJULearning/RMI)
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _validate_label_options(
        num_classes=num_classes,
        rmi_radius=rmi_radius,
        rmi_pool_way=rmi_pool_way,
        rmi_pool_size=rmi_pool_size,
        rmi_pool_stride=rmi_pool_stride,
        loss_weight_lambda=loss_weight_lambda,
        lambda_way=lambda_way,
        ignore_index=ignore_index,
        exclude_ignored=exclude_ignored,
    )
    _validate_label_arrays(
        logits,
        labels,
        num_classes=num_classes,
        radius=rmi_radius,
        pool_way=rmi_pool_way,
        stride=rmi_pool_stride,
        channel_axis=channel_axis,
    )
    # Elementwise work and statistics in the input precision, but at least float32.
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    logits = jnp.moveaxis(logits, channel_axis, 1).astype(dtype)
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    classes = jnp.arange(num_classes)[None, :, None, None]
    target = ((labels[:, None] == classes) & valid[:, None]).astype(dtype)

    bce_weight, rmi_weight = label_term_weights(loss_weight_lambda, lambda_way)
    loss = jnp.zeros((), dtype)
    if bce_weight != 0:
        loss += bce_weight * masked_bce(logits, target, valid)
    if rmi_weight != 0:
        probabilities = jax.nn.sigmoid(logits) * valid[:, None] + PROBABILITY_OFFSET
        loss += rmi_weight * label_rmi_term(
            probabilities,
            target,
            valid if exclude_ignored else None,
            radius=rmi_radius,
            pool_way=rmi_pool_way,
            stride=rmi_pool_stride,
        )
    return loss


def label_term_weights(loss_weight_lambda: float, lambda_way: int) -> tuple[float, float]:
    """Weights of the BCE and RMI terms: ``(l, 1 - l)`` for ``lambda_way=1``, else ``(1, l)``."""
    if lambda_way == 1:
        return loss_weight_lambda, 1.0 - loss_weight_lambda
    return 1.0, loss_weight_lambda


def masked_bce(logits: jnp.ndarray, target: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """BCE with logits summed over valid pixels and all classes, over ``valid pixels + 1``.

    ``[N, C, H, W]`` logits and target, ``[N, H, W]`` boolean ``valid``; one number for the
    whole batch, as in the authors' code (the ``+ 1`` keeps an all-ignored batch finite).
    """
    elementwise = _bce_logits(logits, target) * valid[:, None]
    # Counted in integers: a float32 count stops being exact at 2**24 pixels.
    return elementwise.sum() / (jnp.count_nonzero(valid) + 1).astype(logits.dtype)


def label_rmi_term(
    probabilities: jnp.ndarray,
    target: jnp.ndarray,
    valid: jnp.ndarray | None,
    *,
    radius: int,
    pool_way: int,
    stride: int,
) -> jnp.ndarray:
    """Per class the batch mean of ``0.5 logdet(M + eps I) / d``, summed over classes.

    ``probabilities`` and ``target`` are ``[N, C, H, W]`` at full resolution. ``valid``: ``None``
    (every window counts) or the ``[N, H, W]`` mask whose invalid pixels' windows leave.
    """
    method = _POOLING_METHODS.get(pool_way, "max")
    window_mask = None
    if pool_way == 2 and stride > 1:
        size = (probabilities.shape[2] // stride, probabilities.shape[3] // stride)
        probabilities = resize_bilinear_corners(probabilities, size)
        target = resize_nearest(target, size)
        valid = None if valid is None else resize_validity(valid, size)
        stride = 1  # downsampled already: no pooling left to do
    if valid is not None:
        window_mask = masked_window_weights(
            valid,
            "labels (with exclude_ignored=True)",
            radius=radius,
            method=method,
            stride=stride,
            dtype=probabilities.dtype,
        )
    lower_bound = _rmi_lower_bound(
        probabilities,
        target,
        radius=radius,
        downsampling_method=method,
        stride=stride,
        offset=CHOLESKY_LOG_OFFSET,
        epsilon=EPSILON,
        dtype=probabilities.dtype,
        window_weights=window_mask,
    )
    return lower_bound.mean(axis=0).sum()


def nearest_source_indices(size_in: int, size_out: int) -> np.ndarray:
    """Input index read by each output index of PyTorch's ``interpolate(mode="nearest")``.

    ``floor(i * in / out)`` with the scale and the product in float32, as PyTorch computes
    them: exact arithmetic reads a different row for some sizes (e.g. 106 -> 26).
    """
    positions = np.arange(size_out, dtype=np.float32) * (np.float32(size_in) / size_out)
    return np.minimum(np.floor(positions).astype(np.int32), size_in - 1)


def resize_nearest(maps: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Nearest-neighbour resize of the last two axes to ``size``, PyTorch's index rule."""
    rows = nearest_source_indices(maps.shape[-2], size[0])
    cols = nearest_source_indices(maps.shape[-1], size[1])
    return jnp.take(jnp.take(maps, rows, axis=-2), cols, axis=-1)


def _corner_aligned_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and upper weight of each output of a linear resize."""
    # Aligned corners: output i sits at input position i * (in - 1) / (out - 1).
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    positions = np.arange(size_out) * scale
    lower = np.minimum(np.floor(positions).astype(np.int32), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, positions - lower


def _resize_axis_linear(x: jnp.ndarray, axis: int, size_out: int) -> jnp.ndarray:
    lower, upper, weight = _corner_aligned_taps(x.shape[axis], size_out)
    shape = [1] * x.ndim
    shape[axis] = size_out
    weight = jnp.asarray(weight.reshape(shape), x.dtype)
    # Two gathers and a blend, not an interpolation matrix: no matmul, so no reduced-precision
    # (TF32/bf16) accelerator kernels, and the cost stays linear in the map size.
    return jnp.take(x, lower, axis=axis) * (1.0 - weight) + jnp.take(x, upper, axis=axis) * weight


def resize_validity(valid: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Which cells of the resized maps come from valid pixels only: the nearest-neighbour
    source and every bilinear tap of nonzero weight must be valid."""
    for axis, size_out in zip((-2, -1), size, strict=True):
        lower, upper, weight = _corner_aligned_taps(valid.shape[axis], size_out)
        nearest = nearest_source_indices(valid.shape[axis], size_out)
        upper_used = jnp.take(valid, upper, axis=axis) | jnp.asarray(weight == 0).reshape(
            (-1, 1) if axis == -2 else (-1,)
        )
        valid = jnp.take(valid, lower, axis=axis) & upper_used & jnp.take(valid, nearest, axis=axis)
    return valid


def resize_bilinear_corners(maps: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Bilinear resize of the last two axes to ``size`` with aligned corners.

    PyTorch's ``interpolate(mode="bilinear", align_corners=True)``, which ``jax.image.resize``
    does not offer.
    """
    rows_done = _resize_axis_linear(maps, maps.ndim - 2, size[0])
    return _resize_axis_linear(rows_done, maps.ndim - 1, size[1])


def label_map_size(size: int, pool_way: int, stride: int) -> int:
    """Length of one spatial axis after the label-map downsampling."""
    if pool_way == 2 and stride > 1:
        return size // stride
    return map_size_after_downsampling(size, "max", stride)


def minimum_label_input_size(radius: int, pool_way: int, stride: int) -> int:
    """Smallest input length per axis that leaves room for one region after downsampling."""
    if pool_way == 2 and stride > 1:
        return radius * stride
    return minimum_input_size(radius, "max", stride)


def _require_choice(name: str, value: object, choices: dict[int, str]) -> None:
    _require_int(name, value, min(choices))
    if value not in choices:
        listed = ", ".join(f"{key} ({meaning})" for key, meaning in choices.items())
        raise ValueError(f"{name} must be one of {listed}, got {value}")


def _validate_label_options(
    *,
    num_classes: object,
    rmi_radius: object,
    rmi_pool_way: object,
    rmi_pool_size: object,
    rmi_pool_stride: object,
    loss_weight_lambda: object,
    lambda_way: object,
    ignore_index: object,
    exclude_ignored: object,
) -> None:
    """Check the Python-valued options (static, so free under ``jit``)."""
    _require_int("num_classes", num_classes, 1)
    _require_int("rmi_radius", rmi_radius, 1)
    _require_choice("rmi_pool_way", rmi_pool_way, POOL_WAYS)
    _require_int("rmi_pool_size", rmi_pool_size, 1)
    _require_int("rmi_pool_stride", rmi_pool_stride, 1)
    if rmi_pool_size != rmi_pool_stride:
        raise ValueError(
            f"rmi_pool_size must equal rmi_pool_stride (the pooling kernel is the stride), got "
            f"rmi_pool_size={rmi_pool_size} and rmi_pool_stride={rmi_pool_stride}"
        )
    weight = _require_real("loss_weight_lambda", loss_weight_lambda)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"loss_weight_lambda must be in [0, 1], got {loss_weight_lambda}")
    _require_choice("lambda_way", lambda_way, LAMBDA_WAYS)
    _require_int("ignore_index", ignore_index, _SMALLEST_LABEL)
    _require_bool("exclude_ignored", exclude_ignored)


def _validate_label_arrays(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    num_classes: int,
    radius: int,
    pool_way: int,
    stride: int,
    channel_axis: object,
) -> None:
    """Check ranks, shapes, dtypes and that a region fits (shapes only: runs at trace time)."""
    batch, classes, height, width = check_prediction("logits", logits, channel_axis)
    if labels.shape != (batch, height, width):
        raise ValueError(
            f"labels must have shape [N, H, W] = {(batch, height, width)} to match logits of "
            f"shape {logits.shape}, got shape {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype (class indices), got {labels.dtype}")
    if batch == 0:
        raise ValueError(f"logits must have at least one example, got shape {logits.shape}")
    if classes != num_classes:
        raise ValueError(
            f"num_classes={num_classes} must equal the number of channels of logits, got "
            f"{classes} channels on channel_axis={channel_axis} (shape {logits.shape})"
        )
    _check_regions_fit(height, width, radius=radius, pool_way=pool_way, stride=stride)


def _check_regions_fit(height: int, width: int, *, radius: int, pool_way: int, stride: int):
    map_h = label_map_size(height, pool_way, stride)
    map_w = label_map_size(width, pool_way, stride)
    if min(map_h, map_w) < radius:
        minimum = minimum_label_input_size(radius, pool_way, stride)
        raise ValueError(
            f"logits' spatial size {height}x{width} becomes {map_h}x{map_w} after "
            f"rmi_pool_way={pool_way} ({POOL_WAYS[pool_way]}) with rmi_pool_stride={stride}, "
            f"smaller than rmi_radius={radius}: no region fits; spatial size must be at least "
            f"{minimum}x{minimum} for these options"
        )
