"""Public JAX API: ``rmi_loss`` (dense targets) and the checks of its arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rmi_core.geometry import Sizes, dense_window_grid, window_step
from rmi_core.numerics import CHOLESKY_LOG_OFFSET, check_epsilon
from rmi_core.options import (
    DownsamplingMethod,
    Reduction,
    SpatialOption,
    call_options,
    check_dense_options,
    is_array,
    per_axis,
)
from rmi_core.shapes import (
    channels_first_shape,
    check_dense_shapes,
    check_floating,
    check_mask_shape,
    check_rank,
)
from rmi_core.terms import LossTerms, combine_terms, terms_to_compute
from rmi_jax._bce import bce_per_example
from rmi_jax._statistics import lower_bound
from rmi_jax._windows import downsample, masked_window_weights


def rmi_loss(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    with_logits: bool,
    radius: SpatialOption = 3,
    bce_weight: float | ArrayLike = 0.5,
    downsampling_method: DownsamplingMethod = "max",
    stride: SpatialOption = 3,
    use_log_trace: bool = True,
    use_double_precision: bool = False,
    epsilon: float = 5e-4,
    channel_axis: int = -1,
    reduction: Reduction = "mean",
    valid_mask: ArrayLike | None = None,
    return_terms: bool = False,
) -> jax.Array | LossTerms:
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
    Volumes (rank 5) work alike, with :math:`R_d \times R_h \times R_w` boxes (``radius`` and
    ``stride`` may give one value per spatial axis, for images too; docs/semantics.md,
    "Volumes and per-axis regions").

    The log-determinant comes from a QR factorisation of the centred data with
    :math:`\sqrt{\epsilon} I` rows appended, never from squared data, with every product at full
    precision, so the float32 route is accurate; and for any ``epsilon`` it accepts (an
    ``epsilon`` too small for the dtype of the statistics is refused) it cannot fail. Its
    gradient is closed-form (a custom VJP); ``jax.grad`` of ``jax.grad`` works, forward-mode
    differentiation (``jax.jvp``, ``jax.hessian``) does not.

    A NaN or an infinity in ``pred`` or ``target`` (outside ``valid_mask``) makes the loss NaN;
    probabilities (``with_logits=False``) are clipped to ``[0, 1]`` first, so a rounding
    ``1 + 1e-6`` is harmless. See ``docs/semantics.md`` for the semantics in full.

    Args:
      pred: logits (``with_logits=True``) or probabilities: images of rank 4, ``[N, H, W, C]``
        by default, or volumes of rank 5, ``[N, D, H, W, C]``. Any floating dtype; bfloat16 and
        float16 are computed in float32.
      target: same shape as ``pred``; binary or soft per-class targets in ``[0, 1]``.
      with_logits: apply a sigmoid to ``pred`` (and use the stable BCE with logits).
      radius: side ``R`` of the square (cubic) regions, or a tuple of sides, one per spatial
        axis (``(R_h, R_w)`` or ``(R_d, R_h, R_w)``: boxes, ``d`` their number of cells).
      bce_weight: weight ``w`` in ``[0, 1]`` of the BCE term; ``1 - w`` weights the RMI term. A
        Python number, or a scalar array that may be traced (a schedule inside a jitted step
        does not recompile; then both terms are always computed, and the value is not checked).
      downsampling_method: ``"max"`` or ``"avg"`` pooling (kernel = stride, padding
        ``stride // 2``) before extracting regions, or ``"region-extraction"``: no pooling,
        regions taken every ``stride`` pixels.
      stride: downsampling factor, or a tuple of one per spatial axis; 1 disables downsampling
        (along that axis).
      use_log_trace: take the log-determinant as ``2 sum(log(diag(chol) + 1e-8))`` as the
        reference does by default; ``False`` gives the plain log-determinant.
      use_double_precision: compute the statistics in float64. Requires ``jax_enable_x64``.
        float64 inputs are always computed in float64.
      epsilon: the ridge added to both covariance matrices; at least
        ``rmi_core.numerics.minimum_epsilon`` for the dtype of the statistics and the map size
        (about 1e-8 to 1e-4 in float32 for maps of 1e3 to 1e6 windows).
      channel_axis: axis of ``pred`` holding the classes (``-1`` NHWC, ``1`` NCHW; any axis but
        the batch axis 0).
      reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"``.
      valid_mask: optional boolean mask, the shape of ``pred`` without its channel axis
        (``[N, H, W]``, ``[N, D, H, W]`` for volumes); ``False`` marks pixels to leave out
        (unlabelled, padding). Masked pixels leave the BCE mean, and every region window
        touching one (after downsampling, a pooled cell is masked if any pixel under it is)
        leaves the statistics: centring and covariances use the remaining windows only. Their
        values never matter. Each example needs one window free of masked pixels: that is
        checked (``ValueError``) when the mask is concrete; a traced mask (under ``jit`` or
        ``vmap``) without one gives NaN.
      return_terms: return ``LossTerms(total, bce, rmi)`` instead of the total: the loss and
        its two unweighted terms, each reduced like the loss (``total = w bce + (1 - w) rmi``),
        for logging; both terms are then computed whatever the weight.

    Returns:
      A scalar for ``"mean"`` and ``"sum"``, per-example losses of shape ``[N]`` for
      ``"none"`` (or a ``LossTerms`` of those); float32, or float64 when the statistics run in
      float64.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rmi_jax import rmi_loss
      >>> logits = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
      >>> target = (jax.random.uniform(jax.random.key(1), (2, 32, 32, 3)) > 0.5).astype(float)
      >>> loss, grad = jax.value_and_grad(lambda x: rmi_loss(x, target, with_logits=True))(logits)
      >>> loss.shape, grad.shape
      ((), (2, 32, 32, 3))

    References:
      Zhao, Wang, Yang, Cai. "Region Mutual Information Loss for Semantic Segmentation",
      NeurIPS 2019. https://arxiv.org/abs/1910.12037
    """
    check_dense_options(**call_options(locals(), ("pred", "target", "valid_mask", "channel_axis")))
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    mask = None if valid_mask is None else jnp.asarray(valid_mask)
    channels_first, radius, stride = _check_inputs(
        pred,
        target,
        mask,
        radius=radius,
        method=downsampling_method,
        stride=stride,
        channel_axis=channel_axis,
    )
    check_x64(use_double_precision)
    # Elementwise work (BCE, sigmoid, pooling) in the input precision but at least float32, as the
    # reference does; statistics in float32 unless float64 was asked for or given.
    work_dtype = jnp.promote_types(pred.dtype, jnp.float32)
    stats_dtype = jnp.float64 if use_double_precision else work_dtype
    grid = dense_window_grid(channels_first[2:], radius, downsampling_method, stride)
    check_epsilon_in(stats_dtype, epsilon, radius, grid)
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

    # Non-finite values are flagged before the probabilities are clipped to [0, 1].
    flags = None if with_logits else non_finite_flags(pred, target)
    if not with_logits:
        pred = clip_probabilities(pred)
    bce_weight = weight_in(bce_weight, stats_dtype)
    need_bce, need_rmi = terms_to_compute(bce_weight, 1.0 - bce_weight, return_terms)
    bce = rmi = None
    if need_bce:
        bce = bce_per_example(pred, target, with_logits, pixel_mask).astype(stats_dtype)
        # The BCE of logits is NaN or infinite wherever an input is: it flags them for free.
        flags = bce if with_logits else flags
    if need_rmi:
        if with_logits and downsampling_method == "max":
            # The sigmoid is increasing, so it commutes with max pooling: pooling the logits first
            # applies it to a stride**2 times smaller map and keeps no full-size copy for autodiff.
            p_maps = jax.nn.sigmoid(downsample(pred, downsampling_method, stride, spatial_axes))
        else:
            probabilities = jax.nn.sigmoid(pred) if with_logits else pred
            p_maps = downsample(probabilities, downsampling_method, stride, spatial_axes)
        y_maps = downsample(target, downsampling_method, stride, spatial_axes)
        rmi = lower_bound(
            jnp.moveaxis(p_maps, channel_axis, 1),
            jnp.moveaxis(y_maps, channel_axis, 1),
            window_mask,
            radius=radius,
            step=window_step(downsampling_method, stride),
            epsilon=epsilon,
            offset=CHOLESKY_LOG_OFFSET if use_log_trace else 0.0,
            dtype=stats_dtype,
        ).sum(axis=1)
    if flags is None:
        flags = non_finite_flags(pred, target)
    rmi_weight = 1.0 - bce_weight
    return combine_terms(
        bce_weight, bce, rmi_weight, rmi, flags, reduction=reduction, return_terms=return_terms
    )


def non_finite_flags(*arrays: jnp.ndarray) -> jnp.ndarray:
    """Per example (leading axis): 0, or NaN when any entry of ``arrays`` is NaN or infinite.

    A reduction of ``0 * x``, which XLA fuses into one read of each array; it never enters the
    gradient.
    """
    return sum(jnp.sum(jax.lax.stop_gradient(a) * 0, axis=tuple(range(1, a.ndim))) for a in arrays)


def clip_probabilities(p: jnp.ndarray) -> jnp.ndarray:
    """Probabilities clipped to [0, 1], with the gradient of the identity inside and at the
    bounds, zero outside; NaN stays NaN (``where``, not ``clip``: the gradient at a saturated
    probability is the unclipped function's, not a framework's convention at a bound)."""
    return jnp.where(p < 0, 0.0, jnp.where(p > 1, 1.0, p))


def weight_in(weight, dtype):
    """A term weight as used: a Python number as it is, an array weight in ``dtype`` (so that a
    float64 schedule does not turn a float32 loss into float64)."""
    return jnp.asarray(weight, dtype) if is_array(weight) else weight


def check_epsilon_in(dtype, epsilon: float, radius: Sizes, grid: Sizes) -> None:
    """:func:`rmi_core.numerics.check_epsilon` for statistics in ``dtype``."""
    unit_roundoff, name = float(jnp.finfo(dtype).eps), jnp.dtype(dtype).name
    check_epsilon(epsilon, radius=radius, grid=grid, unit_roundoff=unit_roundoff, dtype_name=name)


def _x64_enabled() -> bool:
    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64


def check_x64(use_double_precision: bool) -> None:
    """float64 statistics need JAX's x64 mode; say so rather than compute in float32."""
    if use_double_precision and not _x64_enabled():
        raise ValueError(
            "use_double_precision=True needs float64, which JAX disables by default: set "
            "jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1) before calling, "
            "or use the default float32 route, which is accurate without it"
        )


# The layouts of each rank, as the messages describe them.
LAYOUTS = {
    4: "images, [N, H, W, C] or [N, C, H, W] with channel_axis=1",
    5: "volumes, [N, D, H, W, C] or [N, C, D, H, W] with channel_axis=1",
}


def check_prediction(name: str, x: jnp.ndarray, channel_axis: object) -> tuple[int, ...]:
    """Rank 4 or 5, a floating dtype and a valid ``channel_axis``; returns the shape in
    ``[N, C, *spatial]`` order."""
    check_rank(name, x.shape, LAYOUTS)
    check_floating(name, jnp.issubdtype(x.dtype, jnp.floating), str(x.dtype))
    return channels_first_shape(name, x.shape, channel_axis)


def _check_inputs(
    pred: jnp.ndarray,
    target: jnp.ndarray,
    mask: jnp.ndarray | None,
    *,
    radius: SpatialOption,
    method: str,
    stride: SpatialOption,
    channel_axis: object,
) -> tuple[tuple[int, ...], Sizes, Sizes]:
    """Check ranks, shapes, dtypes and that a region fits (shapes only: runs at trace time);
    returns the prediction's shape in ``[N, C, *spatial]`` order, and ``radius`` and
    ``stride`` per spatial axis."""
    channels_first = check_prediction("pred", pred, channel_axis)
    rank = pred.ndim - 2
    radius, stride = per_axis("radius", radius, rank), per_axis("stride", stride, rank)
    check_dense_shapes(
        "pred",
        channels_first,
        pred.shape,
        target.shape,
        radius=radius,
        method=method,
        stride=stride,
    )
    if jnp.issubdtype(target.dtype, jnp.complexfloating):
        raise TypeError(f"target must have a floating, integer or bool dtype, got {target.dtype}")
    if mask is not None:
        check_mask_shape("pred", mask.shape, pred.shape, channel_axis)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"valid_mask must have dtype bool, got {mask.dtype}")
    return channels_first, radius, stride
