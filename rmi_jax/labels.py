"""RMI loss from integer label maps: the paper authors' semantics (``docs/semantics.md``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rmi_core.geometry import label_window_grid
from rmi_core.labels import LABEL_EPSILON, PROBABILITY_OFFSET, label_rmi_term, label_term_weights
from rmi_core.options import SpatialOption, call_options, check_label_options, per_axis
from rmi_core.shapes import check_label_shapes
from rmi_core.terms import LossTerms, combine_terms, terms_to_compute
from rmi_jax import _statistics, _windows
from rmi_jax._bce import label_bce
from rmi_jax.api import (
    check_epsilon_in,
    check_prediction,
    check_x64,
    non_finite_flags,
    weight_in,
)


def rmi_loss_from_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    rmi_radius: SpatialOption = 3,
    rmi_pool_way: int = 0,
    rmi_pool_size: SpatialOption = 3,
    rmi_pool_stride: SpatialOption = 3,
    loss_weight_lambda: float | ArrayLike = 0.5,
    lambda_way: int = 1,
    ignore_index: int = 255,
    use_double_precision: bool = False,
    channel_axis: int = -1,
    exclude_ignored: bool = False,
    return_terms: bool = False,
) -> jax.Array | LossTerms:
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
    The value can be negative; it is NaN if a logit is NaN or infinite (ignored pixels
    included).
    Label volumes (``[N, D, H, W]`` with rank-5 logits) work alike, with boxes for regions; the
    spatial options may give one value per axis.

    Args:
      logits: ``[N, H, W, C]`` images or ``[N, D, H, W, C]`` volumes by default (classes
        first with ``channel_axis=1``); any floating dtype, bfloat16 and float16 computed in
        float32.
      labels: integer class indices, ``[N, H, W]`` (``[N, D, H, W]`` for volumes).
      num_classes: number of classes ``C``; must equal the channel count of ``logits``.
      rmi_radius: side ``R`` of the square (cubic) regions, or one side per spatial axis.
      rmi_pool_way: downsampling before the regions: 0 max pooling, 1 average pooling (kernel =
        stride = ``rmi_pool_stride``, padding ``stride // 2``, padded zeros counted), 2 resize to
        ``(H // stride, W // stride)`` (volumes: ``D // stride`` too), nearest for the target and
        bilinear (trilinear) with aligned corners for the probabilities.
      rmi_pool_size: the pooling kernel; must equal ``rmi_pool_stride``.
      rmi_pool_stride: downsampling factor, or one per spatial axis; 1 disables downsampling.
      loss_weight_lambda: :math:`\lambda` in ``[0, 1]``: a Python number, or a scalar array
        that may be traced (no recompilation when it changes; both terms are then computed).
      lambda_way: how :math:`\lambda` combines the two terms (1 or 0, see above).
      ignore_index: a label value to ignore besides those outside ``[0, num_classes)``.
      use_double_precision: region statistics in float64, as the authors' code computes them
        (needs ``jax_enable_x64``); the default float32 route is accurate too. float64 logits
        are always computed in float64.
      channel_axis: axis of ``logits`` holding the classes (``-1`` NHWC, ``1`` NCHW; any axis
        but the batch axis 0).
      exclude_ignored: leave out of the statistics every region window that touches an ignored
        pixel (after downsampling: a cell is ignored if any pixel it is pooled or resized from
        is), instead of counting ignored pixels as zero points; centring and covariances use
        the remaining windows. Each example needs one such window: checked (``ValueError``)
        for concrete labels; traced labels (under ``jit``) without one give NaN.
      return_terms: return ``LossTerms(total, bce, rmi)``: the loss and its two unweighted
        terms (``total`` weighs them as ``lambda_way`` says), for logging.

    Returns:
      The scalar loss (or a ``LossTerms`` of scalars): float32, or float64 when the statistics
      run in float64.

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
      Zhao, Wang, Yang, Cai. "Region Mutual Information Loss for Semantic Segmentation",
      NeurIPS 2019. https://arxiv.org/abs/1910.12037 (code: github.com/ZJULearning/RMI)
    """
    check_label_options(**call_options(locals(), ("logits", "labels", "channel_axis")))
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    channels_first = check_prediction("logits", logits, channel_axis)
    rank = logits.ndim - 2
    rmi_radius, rmi_pool_stride = (
        per_axis(name, value, rank)
        for name, value in (("rmi_radius", rmi_radius), ("rmi_pool_stride", rmi_pool_stride))
    )
    check_label_shapes(
        channels_first,
        logits.shape,
        labels.shape,
        num_classes=num_classes,
        channel_axis=channel_axis,
        radius=rmi_radius,
        pool_way=rmi_pool_way,
        stride=rmi_pool_stride,
    )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype (class indices), got {labels.dtype}")
    check_x64(use_double_precision)
    # Elementwise work in the input precision but at least float32, as the authors' code does;
    # statistics in float32 unless float64 was asked for or given.
    work_dtype = jnp.promote_types(logits.dtype, jnp.float32)
    stats_dtype = jnp.float64 if use_double_precision else work_dtype
    grid = label_window_grid(channels_first[2:], rmi_radius, rmi_pool_way, rmi_pool_stride)
    check_epsilon_in(stats_dtype, LABEL_EPSILON, rmi_radius, grid)
    logits = jnp.moveaxis(logits, channel_axis, 1).astype(work_dtype)
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    classes = jnp.arange(num_classes).reshape(1, -1, *(1 for _ in range(rank)))
    target = ((labels[:, None] == classes) & valid[:, None]).astype(work_dtype)

    bce_weight, rmi_weight = label_term_weights(
        weight_in(loss_weight_lambda, stats_dtype), lambda_way
    )
    need_bce, need_rmi = terms_to_compute(bce_weight, rmi_weight, return_terms)
    bce = rmi = None
    if need_bce:
        bce = label_bce(logits, target, valid).astype(stats_dtype)
    if need_rmi:
        probabilities = jax.nn.sigmoid(logits) * valid[:, None] + PROBABILITY_OFFSET
        rmi = label_rmi_term(
            _windows,
            _statistics,
            probabilities,
            target,
            valid if exclude_ignored else None,
            radius=rmi_radius,
            pool_way=rmi_pool_way,
            stride=rmi_pool_stride,
            dtype=stats_dtype,
        )
    # NaN or an infinity in the logits makes the loss NaN; the BCE flags them when computed.
    flags = non_finite_flags(logits).sum() if bce is None else bce
    return combine_terms(
        bce_weight, bce, rmi_weight, rmi, flags, reduction="none", return_terms=return_terms
    )
