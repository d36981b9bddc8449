"""Public JAX API: ``rmi_loss`` and its argument validation."""

from __future__ import annotations

import numbers
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rmi_jax._bce import bce_per_example
from rmi_jax._statistics import region_log_det
from rmi_jax._windows import (
    DOWNSAMPLING_METHODS,
    downsample,
    downsample_validity,
    map_size_after_downsampling,
    minimum_input_size,
    window_step,
    window_weights,
)

REDUCTIONS = ("mean", "sum", "none")
Reduction = Literal["mean", "sum", "none"]
DownsamplingMethod = Literal["max", "avg", "region-extraction"]

# The reference adds this inside the log of each Cholesky diagonal entry ("log trace" route).
CHOLESKY_LOG_OFFSET = 1e-8


def rmi_loss(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    with_logits: bool,
    radius: int = 3,
    bce_weight: float = 0.5,
    downsampling_method: DownsamplingMethod = "max",
    stride: int = 3,
    use_log_trace: bool = True,
    use_double_precision: bool = False,
    epsilon: float = 5e-4,
    channel_axis: int = -1,
    reduction: Reduction = "mean",
    valid_mask: ArrayLike | None = None,
) -> jax.Array:
    r"""Region Mutual Information loss (Zhao et al., 2019) with a weighted BCE term.

    For each example :math:`n` and class :math:`c`, let :math:`P` and :math:`Y` be the
    :math:`d \times L` matrices of centred :math:`R \times R` region vectors (:math:`d = R^2`) of
    the downsampled probabilities and target, and

    .. math::
        M = Y Y^\top - Y P^\top (P P^\top + \epsilon I)^{-1} P Y^\top, \qquad
        \ell_{nc} = \frac{1}{2d} \log\det(M + \epsilon I).

    The per-example loss is
    :math:`(1 - w) \sum_c \ell_{nc} + w \cdot \mathrm{mean}(\mathrm{BCE})` with
    :math:`w` = ``bce_weight``. It matches the ``rmi-pytorch`` package's ``RMILoss``.
    The value can be negative; only its gradient matters for training.

    The log-determinant comes from a QR factorisation of the centred data with
    :math:`\sqrt{\epsilon} I` rows appended, never from squared data, so the float32 route is
    accurate and cannot fail; its gradient is closed-form (a custom VJP).

    Args:
      pred: logits (``with_logits=True``) or probabilities, rank 4, ``[N, H, W, C]`` by default.
        Any floating dtype; bfloat16 and float16 are computed in float32.
      target: same shape as ``pred``; binary or soft per-class targets in ``[0, 1]``.
      with_logits: apply a sigmoid to ``pred`` (and use the stable BCE with logits).
      radius: side ``R`` of the square regions.
      bce_weight: weight ``w`` in ``[0, 1]`` of the BCE term; ``1 - w`` weights the RMI term.
      downsampling_method: ``"max"`` or ``"avg"`` pooling (kernel = stride, padding
        ``stride // 2``) before extracting regions, or ``"region-extraction"``: no pooling,
        regions taken every ``stride`` pixels.
      stride: downsampling factor; 1 disables downsampling.
      use_log_trace: take the log-determinant as ``2 sum(log(diag(chol) + 1e-8))`` as the
        reference does by default; ``False`` gives the plain log-determinant.
      use_double_precision: compute the statistics in float64. Requires ``jax_enable_x64``.
        float64 inputs are always computed in float64.
      epsilon: the ridge added to both covariance matrices.
      channel_axis: axis of ``pred`` holding the classes (``-1`` NHWC, ``1`` NCHW).
      reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"``.
      valid_mask: optional boolean mask, the shape of ``pred`` without its channel axis
        (``[N, H, W]``); ``False`` marks pixels to leave out (unlabelled, padding). Masked pixels
        leave the BCE mean, and every region window touching one (after downsampling, a pooled
        cell is masked if any pixel under it is) leaves the statistics: centring and
        covariances use the remaining windows only. Their values never matter. Each example
        needs one window free of masked pixels: that is checked (``ValueError``) when the mask
        is concrete; a traced mask (under ``jit`` or ``vmap``) without one gives NaN.

    Returns:
      A scalar for ``"mean"`` and ``"sum"``, per-example losses of shape ``[N]`` for
      ``"none"``; float32, or float64 when the statistics run in float64.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rmi_jax import rmi_loss
      >>> logits = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
      >>> target = (jax.random.uniform(jax.random.key(1), (2, 32, 32, 3)) > 0.5).astype(float)
      >>> loss, grad = jax.value_and_grad(lambda x: rmi_loss(x, target, with_logits=True))(logits)
      >>> loss.shape, grad.shape
      ((), (2, 32, 32, 3))

    References:
      Zhao, Cai, Xu, Yang, He. "Region Mutual Information Loss for Semantic Segmentation",
      NeurIPS 2019. https://arxiv.org/abs/1910.12037
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    mask = None if valid_mask is None else jnp.asarray(valid_mask)
    _validate_options(
        with_logits=with_logits,
        radius=radius,
        bce_weight=bce_weight,
        downsampling_method=downsampling_method,
        stride=stride,
        use_log_trace=use_log_trace,
        use_double_precision=use_double_precision,
        epsilon=epsilon,
        reduction=reduction,
    )
    _validate_arrays(
        pred,
        target,
        radius=radius,
        method=downsampling_method,
        stride=stride,
        channel_axis=channel_axis,
    )
    if mask is not None:
        _validate_mask(mask, pred.shape, channel_axis)
    # Elementwise work (BCE, sigmoid, pooling) in the input precision but at least float32, as the
    # reference does; statistics in float32 unless float64 was asked for or given.
    work_dtype = jnp.promote_types(pred.dtype, jnp.float32)
    stats_dtype = jnp.float64 if use_double_precision else work_dtype
    pred, target = pred.astype(work_dtype), target.astype(work_dtype)
    # Full-size work happens in the caller's layout; only the pooled maps are moved to NCHW, so
    # no transposed copy of the inputs is ever made.
    channel_axis %= pred.ndim
    spatial_axes = tuple(a for a in range(1, pred.ndim) if a != channel_axis)
    pixel_mask = window_mask = None
    if mask is not None:
        pixel_mask = jnp.expand_dims(mask, channel_axis)  # broadcasts against pred
        # Masked values must not matter, not even as NaN times a zero weight.
        pred = jnp.where(pixel_mask, pred, 0.0)
        target = jnp.where(pixel_mask, target, 0.0)
        window_mask = masked_window_weights(
            mask,
            "valid_mask",
            radius=radius,
            method=downsampling_method,
            stride=stride,
            dtype=stats_dtype,
        )

    per_example = jnp.zeros(pred.shape[0], stats_dtype)
    if bce_weight != 0:
        bce = bce_per_example(pred, target, with_logits, pixel_mask)
        per_example += bce_weight * bce.astype(stats_dtype)
    if bce_weight != 1:
        if with_logits and downsampling_method == "max":
            # The sigmoid is increasing, so it commutes with max pooling: pooling the logits first
            # applies it to a stride**2 times smaller map and keeps no full-size copy for autodiff.
            p_maps = jax.nn.sigmoid(downsample(pred, downsampling_method, stride, spatial_axes))
        else:
            probabilities = jax.nn.sigmoid(pred) if with_logits else pred
            p_maps = downsample(probabilities, downsampling_method, stride, spatial_axes)
        y_maps = downsample(target, downsampling_method, stride, spatial_axes)
        lower_bound = _lower_bound_of_maps(
            jnp.moveaxis(p_maps, channel_axis, 1),
            jnp.moveaxis(y_maps, channel_axis, 1),
            radius=radius,
            step=window_step(downsampling_method, stride),
            offset=CHOLESKY_LOG_OFFSET if use_log_trace else 0.0,
            epsilon=epsilon,
            dtype=stats_dtype,
            window_weights=window_mask,
        )
        per_example += (1.0 - bce_weight) * lower_bound.sum(axis=1)
    return _reduce(per_example, reduction)


def _rmi_lower_bound(
    probabilities: jnp.ndarray,
    target: jnp.ndarray,
    *,
    radius: int,
    downsampling_method: str,
    stride: int,
    offset: float,
    epsilon: float,
    dtype: jnp.dtype,
    window_weights: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """``0.5 logdet(M + eps I) / d`` per example and class, ``[N, C, H, W] -> [N, C]``."""
    return _lower_bound_of_maps(
        downsample(probabilities, downsampling_method, stride),
        downsample(target, downsampling_method, stride),
        radius=radius,
        step=window_step(downsampling_method, stride),
        offset=offset,
        epsilon=epsilon,
        dtype=dtype,
        window_weights=window_weights,
    )


def _lower_bound_of_maps(
    p_maps: jnp.ndarray,
    y_maps: jnp.ndarray,
    *,
    radius: int,
    step: int,
    offset: float,
    epsilon: float,
    dtype: jnp.dtype,
    window_weights: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """The lower bound from already downsampled maps, windows every ``step`` pixels.

    ``window_weights``: ``None`` or ``[N, L]`` 0/1 weights of the windows, shared by the classes.
    """
    if window_weights is not None:
        window_weights = jnp.broadcast_to(
            window_weights[:, None], (*p_maps.shape[:2], window_weights.shape[-1])
        )
    # 0.5 * logdet = sum(log(diag(chol))), so the 0.5 and the 2 of the reference cancel.
    log_det = region_log_det(
        p_maps.astype(dtype), y_maps.astype(dtype), window_weights, radius, step, epsilon, offset
    )
    return log_det / (radius * radius)


def masked_window_weights(
    mask: jnp.ndarray, name: str, *, radius: int, method: str, stride: int, dtype
) -> jnp.ndarray:
    """``[N, H, W]`` pixel mask -> ``[N, L]`` 0/1 weights of the region windows it leaves whole.

    Raises if a concrete ``mask`` (called ``name`` in the message) leaves an example without
    any window; a traced one cannot be checked.
    """
    cells = downsample_validity(mask, method, stride)
    weights = window_weights(cells, radius, window_step(method, stride), dtype)
    if not isinstance(weights, jax.core.Tracer):
        empty = np.flatnonzero(np.asarray(weights).sum(axis=-1) == 0)
        if empty.size:
            raise ValueError(
                f"{name} leaves example(s) {empty.tolist()} without a region window: every "
                f"{radius}x{radius} window of the downsampled map (downsampling_method="
                f"{method!r}, stride={stride}) touches a masked pixel; each example needs at "
                f"least one window of valid pixels"
            )
    return weights


def _reduce(per_example: jnp.ndarray, reduction: str) -> jnp.ndarray:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"Unsupported reduction: {reduction}")


def _channels_first_shape(shape: tuple[int, ...], channel_axis: int) -> tuple[int, ...]:
    """The shape ``jnp.moveaxis(x, channel_axis, 1)`` would have."""
    axis = channel_axis % len(shape)
    rest = [size for i, size in enumerate(shape) if i != axis]
    return (rest[0], shape[axis], *rest[1:])


def _x64_enabled() -> bool:
    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64


def _require_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _require_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a Python number, got {value!r} of type {type(value).__name__}"
        )
    return float(value)


def _validate_options(
    *,
    with_logits: object,
    radius: object,
    bce_weight: object,
    downsampling_method: object,
    stride: object,
    use_log_trace: object,
    use_double_precision: object,
    epsilon: object,
    reduction: object,
) -> None:
    """Check the Python-valued options (static, so free under ``jit``)."""
    _require_bool("with_logits", with_logits)
    _require_bool("use_log_trace", use_log_trace)
    _require_bool("use_double_precision", use_double_precision)
    _require_int("radius", radius, 1)
    _require_int("stride", stride, 1)
    if downsampling_method not in DOWNSAMPLING_METHODS:
        raise ValueError(
            f"downsampling_method must be one of {DOWNSAMPLING_METHODS}, "
            f"got {downsampling_method!r}"
        )
    weight = _require_real("bce_weight", bce_weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"bce_weight must be in [0, 1], got {bce_weight}")
    eps = _require_real("epsilon", epsilon)
    if not 0.0 < eps < float("inf"):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unsupported reduction: {reduction!r}; expected one of {REDUCTIONS}")
    if use_double_precision and not _x64_enabled():
        raise ValueError(
            "use_double_precision=True needs float64, which JAX disables by default: set "
            "jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1) before calling, "
            "or use the default float32 route, which is accurate without it"
        )


def check_prediction(name: str, x: jnp.ndarray, channel_axis: object) -> tuple[int, ...]:
    """Rank 4, a floating dtype and a valid ``channel_axis``; returns the NCHW shape."""
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have rank 4 ([N, H, W, C] or [N, C, H, W] with channel_axis=1), "
            f"got shape {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise TypeError(f"channel_axis must be an int, got {channel_axis!r}")
    if not -4 <= channel_axis < 4:
        raise ValueError(f"channel_axis must be in [-4, 3] for rank-4 {name}, got {channel_axis}")
    return _channels_first_shape(x.shape, channel_axis)


def _validate_mask(mask: jnp.ndarray, pred_shape: tuple[int, ...], channel_axis: int) -> None:
    """``valid_mask`` must be boolean with the shape of ``pred`` minus its channel axis."""
    expected = tuple(size for i, size in enumerate(pred_shape) if i != channel_axis % 4)
    if mask.shape != expected:
        raise ValueError(
            f"valid_mask must have the shape of pred without its channel axis {expected} "
            f"(pred {pred_shape}, channel_axis={channel_axis}), got shape {mask.shape}"
        )
    if mask.dtype != jnp.bool_:
        raise TypeError(f"valid_mask must have dtype bool, got {mask.dtype}")


def _validate_arrays(
    pred: jnp.ndarray,
    target: jnp.ndarray,
    *,
    radius: int,
    method: str,
    stride: int,
    channel_axis: object,
) -> None:
    """Check ranks, shapes, dtypes and that a region fits (shapes only: runs at trace time)."""
    nchw = check_prediction("pred", pred, channel_axis)
    if target.shape != pred.shape:
        raise ValueError(
            f"target must have the shape of pred {pred.shape}, got shape {target.shape}"
        )
    if jnp.issubdtype(target.dtype, jnp.complexfloating):
        raise TypeError(f"target must have a floating, integer or bool dtype, got {target.dtype}")
    if nchw[0] == 0 or nchw[1] == 0:
        raise ValueError(
            f"pred must have at least one example and one class, got shape {pred.shape}"
        )
    height, width = nchw[2:]
    map_h = map_size_after_downsampling(height, method, stride)
    map_w = map_size_after_downsampling(width, method, stride)
    if min(map_h, map_w) < radius:
        minimum = minimum_input_size(radius, method, stride)
        raise ValueError(
            f"pred's spatial size {height}x{width} becomes {map_h}x{map_w} after "
            f"downsampling_method={method!r} with stride={stride}, smaller than "
            f"radius={radius}: no region fits; spatial size must be at least "
            f"{minimum}x{minimum} for these options"
        )
