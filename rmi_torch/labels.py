"""RMI loss from integer label maps: the paper authors' semantics (``docs/semantics.md``)."""

from __future__ import annotations

import torch

from rmi_core.geometry import label_window_grid
from rmi_core.labels import LABEL_EPSILON, PROBABILITY_OFFSET, label_rmi_term, label_term_weights
from rmi_core.options import SpatialOption, call_options, check_label_options, per_axis
from rmi_core.shapes import check_label_shapes
from rmi_core.terms import LossTerms, combine_terms, terms_to_compute
from rmi_torch import _statistics, _windows
from rmi_torch._bce import label_bce
from rmi_torch.api import (
    OptionsModule,
    _dtype_name,
    check_epsilon_in,
    check_prediction,
    non_finite_flags,
    weight_in,
)


def rmi_loss_from_labels(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    rmi_radius: SpatialOption = 3,
    rmi_pool_way: int = 0,
    rmi_pool_size: SpatialOption = 3,
    rmi_pool_stride: SpatialOption = 3,
    loss_weight_lambda: float | torch.Tensor = 0.5,
    lambda_way: int = 1,
    ignore_index: int = 255,
    use_double_precision: bool = True,
    exclude_ignored: bool = False,
    return_terms: bool = False,
) -> torch.Tensor | LossTerms:
    r"""RMI loss of logits against an integer label map, as in the RMI paper authors' code.

    Pixels whose label is ``ignore_index``, ``>= num_classes`` or negative are ignored. With
    :math:`v` the valid mask, :math:`y` the one-hot target of the valid labels (zero at ignored
    pixels) and :math:`V = \sum v` over the whole batch,
    :math:`\mathrm{BCE} = \sum v \, \mathrm{bce}(x, y) / (V + 1)` (summed over pixels and
    classes) and :math:`\mathrm{RMI} = \sum_c \mathrm{mean}_n \log\det(M_{nc} + \epsilon I) / (2d)`
    with :math:`M_{nc}` the posterior covariance of the ``R x R`` region vectors of the
    downsampled target and probabilities :math:`\sigma(x) v + 10^{-6}` (see :func:`rmi_loss`),
    :math:`d = R^2`, :math:`\epsilon = 5 \cdot 10^{-4}`. The loss is
    :math:`\lambda \mathrm{BCE} + (1 - \lambda) \mathrm{RMI}` (``lambda_way=1``) or
    :math:`\mathrm{BCE} + \lambda \mathrm{RMI}` (``lambda_way=0``). Ignored pixels still count
    as points of the region statistics, as in the authors' code, unless ``exclude_ignored``.
    The value can be negative. Label volumes (``[N, D, H, W]`` with ``[N, C, D, H, W]`` logits)
    work alike, with boxes for regions; the spatial options may give one value per axis.

    Args:
      logits: ``[N, C, H, W]`` images or ``[N, C, D, H, W]`` volumes, floating dtype.
      labels: integer class indices, ``[N, H, W]`` (``[N, D, H, W]`` for volumes).
      num_classes: number of classes ``C``; must equal ``logits.shape[1]``.
      rmi_radius: side ``R`` of the square (cubic) regions, or one side per spatial axis.
      rmi_pool_way: downsampling before the regions: 0 max pooling, 1 average pooling (kernel =
        stride = ``rmi_pool_stride``, padding ``stride // 2``, padded zeros counted), 2 resize to
        ``(H // stride, W // stride)`` (volumes: ``D // stride`` too), nearest for the target and
        bilinear (trilinear) with aligned corners for the probabilities.
      rmi_pool_size: the pooling kernel; must equal ``rmi_pool_stride``.
      rmi_pool_stride: downsampling factor, or one per spatial axis; 1 disables downsampling.
      loss_weight_lambda: :math:`\lambda` in ``[0, 1]``, a Python number or a 0-d tensor.
      lambda_way: how :math:`\lambda` combines the two terms (1 or 0, see above).
      ignore_index: a label value to ignore besides those outside ``[0, num_classes)``.
      use_double_precision: region statistics in float64, as the authors' code computes them;
        ``False`` keeps them in float32 (accurate too: see :func:`rmi_loss`). float64 logits are
        always computed in float64.
      exclude_ignored: leave out of the statistics every region window that touches an ignored
        pixel (after downsampling: a cell is ignored if any pixel it is pooled or resized from
        is), instead of counting ignored pixels as zero points; centring and covariances use
        the remaining windows. An example without such a window is a ``ValueError``.
      return_terms: return ``LossTerms(total, bce, rmi)``: the loss and its two unweighted
        terms (``total`` weighs them as ``lambda_way`` says), for logging.

    Returns:
      The scalar loss (or a ``LossTerms`` of scalars), float64 when the statistics run in
      float64, else float32. NaN if a logit is NaN or infinite (ignored pixels included).

    Example:
      >>> import torch
      >>> from rmi_torch import rmi_loss_from_labels
      >>> logits = torch.randn(2, 5, 32, 32, requires_grad=True)
      >>> labels = torch.randint(0, 5, (2, 32, 32))
      >>> labels[:, :4] = 255  # ignored pixels
      >>> rmi_loss_from_labels(logits, labels, num_classes=5, rmi_pool_way=1).backward()

    References:
      Zhao, Wang, Yang, Cai. "Region Mutual Information Loss for Semantic Segmentation",
      NeurIPS 2019. https://arxiv.org/abs/1910.12037 (code: github.com/ZJULearning/RMI)
    """
    check_label_options(**call_options(locals(), ("logits", "labels")))
    shape = check_prediction("logits", logits)
    rank = len(shape) - 2
    rmi_radius, rmi_pool_stride = (
        per_axis(name, value, rank)
        for name, value in (("rmi_radius", rmi_radius), ("rmi_pool_stride", rmi_pool_stride))
    )
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    check_label_shapes(
        shape,
        shape,
        tuple(labels.shape),
        num_classes=num_classes,
        channel_axis=1,
        radius=rmi_radius,
        pool_way=rmi_pool_way,
        stride=rmi_pool_stride,
    )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"labels must have an integer dtype (class indices), got {_dtype_name(labels.dtype)}"
        )
    # Elementwise work in the input precision but at least float32, as the authors' code does;
    # statistics in float64 unless asked otherwise.
    work_dtype = torch.promote_types(logits.dtype, torch.float32)
    stats_dtype = torch.float64 if use_double_precision else work_dtype
    grid = label_window_grid(shape[2:], rmi_radius, rmi_pool_way, rmi_pool_stride)
    check_epsilon_in(stats_dtype, LABEL_EPSILON, rmi_radius, grid)
    logits = logits.to(work_dtype)
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, *(1 for _ in range(rank)))
    target = ((labels.unsqueeze(1) == classes) & valid.unsqueeze(1)).to(work_dtype)

    bce_weight, rmi_weight = label_term_weights(
        weight_in(loss_weight_lambda, stats_dtype, logits.device), lambda_way
    )
    need_bce, need_rmi = terms_to_compute(bce_weight, rmi_weight, return_terms)
    bce = rmi = None
    if need_bce:
        bce = label_bce(logits, target, valid).to(stats_dtype)
    if need_rmi:
        probabilities = torch.sigmoid(logits) * valid.unsqueeze(1) + PROBABILITY_OFFSET
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


class LabelRMILoss(OptionsModule):
    """RMI loss from label maps as a module, with the constructor of the authors' ``RMILoss``.

    Same option names, order and defaults as the paper authors' code, plus ``ignore_index``,
    ``use_double_precision`` and ``exclude_ignored``. ``forward(logits, labels)`` takes
    ``[N, C, H, W]`` logits and ``[N, H, W]`` integer labels; see :func:`rmi_loss_from_labels`.

    Example:
      >>> import torch
      >>> from rmi_torch import LabelRMILoss
      >>> loss = LabelRMILoss(num_classes=21, rmi_pool_way=1, rmi_pool_size=4, rmi_pool_stride=4)
      >>> logits = torch.randn(2, 21, 64, 64, requires_grad=True)
      >>> labels = torch.randint(0, 21, (2, 64, 64))
      >>> loss(logits, labels).backward()
    """

    def __init__(
        self,
        num_classes: int = 21,
        rmi_radius: SpatialOption = 3,
        rmi_pool_way: int = 0,
        rmi_pool_size: SpatialOption = 3,
        rmi_pool_stride: SpatialOption = 3,
        loss_weight_lambda: float = 0.5,
        lambda_way: int = 1,
        ignore_index: int = 255,
        use_double_precision: bool = True,
        exclude_ignored: bool = False,
        return_terms: bool = False,
    ) -> None:
        super().__init__()
        self._set_options(call_options(locals(), ()), check_label_options)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | LossTerms:
        return rmi_loss_from_labels(logits, labels, **self.options())
