"""The label-map term (the paper authors' semantics, docs/semantics.md#label-maps), written once
for both backends: its constants, how lambda weighs the terms, and the RMI term from the
backend's own windows and statistics."""

from __future__ import annotations

from rmi_core.geometry import label_map_shape, window_step
from rmi_core.numerics import CHOLESKY_LOG_OFFSET

# The authors' code adds this to every probability (an offset, not a clamp) and fixes epsilon.
PROBABILITY_OFFSET = 1e-6
LABEL_EPSILON = 5e-4
# The dense semantics' name for the two poolings of rmi_pool_way 0 and 1.
_POOLING_METHODS = {0: "max", 1: "avg"}


def label_term_weights(loss_weight_lambda, lambda_way: int):
    """Weights of the BCE and RMI terms: ``(l, 1 - l)`` for ``lambda_way=1``, else ``(1, l)``."""
    if lambda_way == 1:
        return loss_weight_lambda, 1.0 - loss_weight_lambda
    return 1.0, loss_weight_lambda


def label_rmi_term(
    windows, statistics, probabilities, target, valid, *, radius, pool_way, stride, dtype
):
    """The label-map RMI term: per class the batch mean of ``0.5 logdet(M + eps I) / d``,
    summed over classes (docs/semantics.md#label-maps, steps 5-7).

    The steps are the backend's: ``windows`` and ``statistics`` are its ``_windows`` and
    ``_statistics`` modules. ``probabilities`` and ``target`` are ``[N, C, *spatial]`` at full
    resolution; ``radius`` and ``stride`` have one entry per spatial axis; the statistics run
    in ``dtype``. ``valid``: ``None`` (every window counts) or the ``[N, *spatial]`` mask whose
    invalid pixels' windows leave (``exclude_ignored``).
    """
    # rmi_pool_way=2 resizes, after which no pooling is left to do (stride 1: any method).
    method = _POOLING_METHODS.get(pool_way, "max")
    if pool_way == 2 and max(stride) > 1:
        size = label_map_shape(tuple(probabilities.shape[2:]), pool_way, stride)
        probabilities = windows.resize_linear_corners(probabilities, size)
        target = windows.resize_nearest(target, size)
        valid = None if valid is None else windows.resize_validity(valid, size)
        stride = tuple(1 for _ in stride)
    mask = None
    if valid is not None:
        name = "labels (with exclude_ignored=True)"
        mask = windows.masked_window_weights(
            valid, name, radius=radius, method=method, stride=stride, dtype=dtype
        )
    maps = (windows.downsample(m, method, stride) for m in (probabilities, target))
    step, offset = window_step(method, stride), CHOLESKY_LOG_OFFSET
    per_class = statistics.lower_bound(
        *maps, mask, radius=radius, step=step, epsilon=LABEL_EPSILON, offset=offset, dtype=dtype
    )
    return per_class.mean(0).sum()
