"""Segmentation metrics for the demos: per-class IoU, mean IoU and a boundary F-score.

NumPy only (no SciPy): morphology is done with shifted views of a padded array, so the
cost is a handful of vectorised passes over ``[N, H, W]`` booleans.

All metrics are *dataset-level*: counts (intersections, unions, matched boundary pixels)
are summed over every image first and divided once, the usual convention for semantic
segmentation benchmarks; per-image averaging would over-weight images where a class covers
a few pixels.

The module also holds the small reporting helpers (table text, JSON-ready dict, comparison
figure) that both training demos share, so the two write identical outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "boundary_f_score",
    "boundaries",
    "confusion_matrix",
    "dilate",
    "evaluate",
    "format_table",
    "mean_iou",
    "per_class_iou",
    "plot_comparison",
    "write_json",
]


def _check_labels(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {pred.shape} and {target.shape}"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected label maps [H, W] or [N, H, W], got shape {pred.shape}")


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion counts ``cm[t, p]`` = number of pixels of true class ``t`` predicted as ``p``.

    Args:
        pred: integer label map(s), any shape.
        target: integer label map(s), same shape, values in ``[0, num_classes)``.
        num_classes: ``C``.

    Returns:
        int64 array ``[C, C]``.
    """
    _check_labels(pred, target)
    idx = target.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Intersection over union per class, ``|P_c ∩ T_c| / |P_c ∪ T_c|``, over all pixels.

    Returns:
        float64 ``[C]``; NaN for a class absent from both prediction and target (its IoU is
        undefined, and counting it as 0 or 1 would bias the mean).
    """
    cm = confusion_matrix(pred, target, num_classes)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean of :func:`per_class_iou` over the classes where it is defined."""
    return float(np.nanmean(per_class_iou(pred, target, num_classes)))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``[..., H, W]`` masks by a ``(2r+1) x (2r+1)`` square.

    The square is separable, so it is a running OR along H then along W: ``2 * (2r + 1)``
    shifted views instead of ``(2r + 1)^2``. Outside the image counts as False.
    """
    if radius <= 0:
        return mask.astype(bool)
    out = mask.astype(bool)
    for axis in (-2, -1):
        size = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad)
        acc = np.zeros_like(out)
        for k in range(2 * radius + 1):
            acc |= np.take(padded, np.arange(k, k + size), axis=axis)
        out = acc
    return out


def boundaries(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of ``[..., H, W]`` binary masks: mask pixels with a 4-neighbour outside.

    The image border is not a boundary (edge padding replicates the mask), so an object cut
    by the frame does not gain a spurious contour there.
    """
    m = mask.astype(bool)
    pad = [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(m, pad, mode="edge")
    core = p[..., 1:-1, 1:-1]
    eroded = core & p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    return m & ~eroded


def boundary_f_score(
    pred: np.ndarray, target: np.ndarray, num_classes: int, tolerance: int = 1
) -> dict[str, np.ndarray]:
    """Boundary precision, recall and F1 per class, matched within ``tolerance`` pixels.

    For each class ``c``: ``B_p`` and ``B_t`` are the boundaries (:func:`boundaries`) of
    ``pred == c`` and ``target == c``. A predicted boundary pixel is correct if a target
    boundary pixel lies in its ``(2*tolerance+1)``-square neighbourhood (Chebyshev distance),
    and vice versa:

    ``precision = |B_p ∩ dilate(B_t)| / |B_p|``, ``recall = |B_t ∩ dilate(B_p)| / |B_t|``,
    ``F1 = 2 P R / (P + R)``, with counts summed over all images.

    Args:
        pred: integer label maps ``[H, W]`` or ``[N, H, W]``.
        target: same shape as ``pred``.
        num_classes: ``C``.
        tolerance: matching distance in pixels (0 = exact pixel match).

    Returns:
        Dict with float64 ``[C]`` arrays ``"precision"``, ``"recall"``, ``"f1"``. A class with
        no boundary in either map gets NaN; a class with boundary in only one of them gets
        precision or recall 0 (the other NaN) and F1 0.
    """
    _check_labels(pred, target)
    precision = np.full(num_classes, np.nan)
    recall = np.full(num_classes, np.nan)
    f1 = np.full(num_classes, np.nan)
    for c in range(num_classes):
        bp, bt = boundaries(pred == c), boundaries(target == c)
        n_p, n_t = int(bp.sum()), int(bt.sum())
        if n_p == 0 and n_t == 0:
            continue
        if n_p:
            precision[c] = (bp & dilate(bt, tolerance)).sum() / n_p
        if n_t:
            recall[c] = (bt & dilate(bp, tolerance)).sum() / n_t
        p, r = np.nan_to_num(precision[c]), np.nan_to_num(recall[c])
        f1[c] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# --- Reporting shared by the two demos -------------------------------------------------------


def evaluate(
    pred: np.ndarray, target: np.ndarray, num_classes: int, tolerance: int = 1
) -> dict[str, object]:
    """All demo metrics as a JSON-ready dict (plain floats; NaN becomes ``None``).

    Keys: ``"iou"`` (list per class), ``"miou"``, ``"boundary_f1"`` (list per class),
    ``"mean_boundary_f1"`` (mean over classes where defined), ``"boundary_tolerance_px"``.
    """

    def clean(values: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else round(float(v), 4) for v in values]

    iou = per_class_iou(pred, target, num_classes)
    bf = boundary_f_score(pred, target, num_classes, tolerance)["f1"]
    return {
        "iou": clean(iou),
        "miou": round(float(np.nanmean(iou)), 4),
        "boundary_f1": clean(bf),
        "mean_boundary_f1": round(float(np.nanmean(bf)), 4),
        "boundary_tolerance_px": tolerance,
    }


def format_table(results: dict[str, dict[str, object]], class_names: Sequence[str]) -> str:
    """A fixed-width text table, one column per run (e.g. ``"bce"`` and ``"bce+rmi"``).

    Args:
        results: run name -> the dict returned by :func:`evaluate`.
        class_names: a name per class, in label order.
    """
    runs = list(results)

    def fmt(v: object) -> str:
        return "   n/a" if v is None else f"{v:6.3f}"

    rows = [f"{'metric':<24}" + "".join(f"{r:>12}" for r in runs)]
    rows.append("-" * len(rows[0]))
    for key, label in (("iou", "IoU"), ("boundary_f1", "boundary F1")):
        for c, name in enumerate(class_names):
            rows.append(
                f"{label + ' ' + name:<24}"
                + "".join(f"{fmt(results[r][key][c]):>12}" for r in runs)
            )
        mean_key = "miou" if key == "iou" else "mean_boundary_f1"
        rows.append(
            f"{'mean ' + label:<24}" + "".join(f"{fmt(results[r][mean_key]):>12}" for r in runs)
        )
        rows.append("-" * len(rows[0]))
    return "\n".join(rows)


def write_json(path: Path, payload: dict[str, object]) -> None:
    """Write ``payload`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def plot_comparison(
    path: Path,
    images: np.ndarray,
    targets: np.ndarray,
    predictions: dict[str, np.ndarray],
    losses: dict[str, Sequence[float]],
    num_classes: int,
    title: str,
) -> None:
    """Save a PNG: rows of (input, target, one prediction per run), then the loss curves.

    Args:
        path: output PNG path (parent folder is created).
        images: ``[K, H, W, 3]`` inputs to show.
        targets: ``[K, H, W]`` label maps.
        predictions: run name -> ``[K, H, W]`` predicted label maps.
        losses: run name -> training loss per step.
        num_classes: ``C`` (fixes the colour map range).
        title: figure title.
    """
    # Imported here so the metric functions above stay usable without matplotlib installed.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = images.shape[0]
    cols = 2 + len(predictions)
    fig = plt.figure(figsize=(2.2 * cols, 2.2 * k + 3.0))
    grid = fig.add_gridspec(k + 1, cols, height_ratios=[1.0] * k + [1.4])
    label_kw = {"cmap": "tab10", "vmin": 0, "vmax": 9, "interpolation": "nearest"}
    heads = ["input", "target", *predictions]
    for i in range(k):
        panels = [np.clip(images[i], 0.0, 1.0), targets[i], *(p[i] for p in predictions.values())]
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(panel, **({} if j == 0 else label_kw))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=9)
    # One loss panel per run: BCE-only and BCE+RMI losses live on different scales (the RMI
    # term is negative), so a shared y axis would flatten one of them.
    curves = grid[k, :].subgridspec(1, len(losses))
    for j, (name, curve) in enumerate(losses.items()):
        ax = fig.add_subplot(curves[0, j])
        curve = np.asarray(curve, dtype=np.float64)
        ax.plot(curve, alpha=0.3, lw=0.8, color=f"C{j}")
        # A moving average makes the trend readable; the raw curve stays faint underneath.
        w = max(1, len(curve) // 25)
        smooth = np.convolve(curve, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w - 1, len(curve)), smooth, lw=1.8, color=f"C{j}")
        ax.set_title(f"training loss: {name}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
