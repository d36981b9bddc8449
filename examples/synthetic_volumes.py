"""A seeded, download-free synthetic 3D segmentation dataset: spheres, tubes and plates.

Each volume is a single-channel scan, ``D x H x W`` voxels (16 x 32 x 32 by default), with
objects of three classes painted into a noisy background. Label 0 is the background; the
object classes are, in painting order (later ones paint over earlier ones):

1. *spheres*: balls of 4 to 8 units radius, one to three per volume;
2. *plates*: thin slabs, discs 2 to 3 units thick and 8 to 14 in radius with a random
   normal, up to two;
3. *tubes*: cylinders 1.5 to 2.5 units in radius along a random 3D direction, crossing the whole
   volume, one or two, painted last so they cut through everything else.

The slices are thick: a voxel is :data:`VOXEL_SPACING` = ``(2, 1, 1)`` units along
``(D, H, W)``, so 16 slices span the same length as 32 rows, and the shapes are round in space
but squashed along the depth axis in voxels (the case of the per-axis ``radius=(1, 3, 3)``).

A voxel's intensity is its class's mean plus a per-object jitter, a per-volume offset, a slow
linear shading across the volume and strong voxel noise. The class means are close to each
other (sphere and plate nearly equal): intensity alone is a weak cue, and the shape (round,
flat, elongated) is what tells the classes apart.

Everything is vectorised over the volumes: Python loops run only over the few object slots.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLASS_NAMES", "VOXEL_SPACING", "make_volumes"]

#: Label value -> name.
CLASS_NAMES: tuple[str, ...] = ("background", "sphere", "tube", "plate")
#: Size of a voxel along ``(D, H, W)``, in the units the shapes are drawn in.
VOXEL_SPACING: tuple[float, float, float] = (2.0, 1.0, 1.0)

# Mean intensity per class, index = label. Sphere and plate are within one noise std.
_CLASS_MEANS = np.array([0.30, 0.55, 0.70, 0.50], dtype=np.float32)
_VOXEL_NOISE = 0.10  # std of the per-voxel Gaussian noise
_VOLUME_SHIFT = 0.05  # std of a per-volume intensity offset
_OBJECT_JITTER = 0.04  # std of a per-object intensity offset
_SHADING = 0.08  # peak amplitude of the linear shading across a volume


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[N, 3]`` directions drawn uniformly on the sphere, in ``(z, y, x)`` order."""
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _along(offset: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Per-voxel dot product of ``offset`` ``[N, D, H, W, 3]`` with ``direction`` ``[N, 3]``."""
    return np.einsum("ndhwk,nk->ndhw", offset, direction)


def make_volumes(
    num_volumes: int, shape: tuple[int, int, int] = (16, 32, 32), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a deterministic synthetic 3D segmentation dataset.

    Args:
        num_volumes: number of volumes ``N``.
        shape: ``(D, H, W)`` of each volume, each at least 8.
        seed: seed of the NumPy generator; the same seed gives bit-identical output.

    Returns:
        ``(images, labels)``: ``images`` float32 ``[N, D, H, W, 1]`` (roughly in ``[0, 1]``,
        not clipped) and ``labels`` int32 ``[N, D, H, W]`` with values in ``[0, 4)``, indexing
        :data:`CLASS_NAMES`.

    Examples:
        >>> images, labels = make_volumes(2, seed=1)
        >>> images.shape, labels.shape, images.dtype, labels.dtype
        ((2, 16, 32, 32, 1), (2, 16, 32, 32), dtype('float32'), dtype('int32'))
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be (D, H, W) with every side at least 8, got {shape}")
    rng = np.random.default_rng(seed)
    n = num_volumes
    # Voxel centres in physical units, [1, D, H, W, 3] in (z, y, x) order, and the extent.
    axes = [
        (np.arange(s, dtype=np.float32) + 0.5) * h
        for s, h in zip(shape, VOXEL_SPACING, strict=True)
    ]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)[None]
    extent = np.array(shape, np.float32) * np.array(VOXEL_SPACING, np.float32)

    images = np.full((n, *shape), _CLASS_MEANS[0], dtype=np.float32)
    labels = np.zeros((n, *shape), dtype=np.int32)

    def paint(mask: np.ndarray, cls: int, present: np.ndarray) -> None:
        mask = mask & present[:, None, None, None]
        level = _CLASS_MEANS[cls] + rng.normal(0.0, _OBJECT_JITTER, n).astype(np.float32)
        labels[mask] = cls
        images[:] = np.where(mask, level[:, None, None, None], images)

    def centres(margin: float) -> np.ndarray:
        """``[N, 3]`` points at least ``margin`` of the extent away from every face."""
        return rng.uniform(margin, 1.0 - margin, (n, 3)) * extent

    for slot in range(3):  # spheres: the first in every volume, then 60 % each
        offset = grid - centres(0.2)[:, None, None, None]
        radius = rng.uniform(4.0, 8.0, n)[:, None, None, None]
        present = np.ones(n, bool) if slot == 0 else rng.random(n) < 0.6
        paint((offset**2).sum(-1) <= radius**2, 1, present)

    for slot in range(2):  # plates: a disc-shaped slab, the first in 90 % of the volumes
        offset = grid - centres(0.25)[:, None, None, None]
        normal = _unit_vectors(rng, n)
        height = _along(offset, normal)
        in_plane = np.sqrt(np.maximum((offset**2).sum(-1) - height**2, 0.0))
        half_thickness = rng.uniform(1.0, 1.5, n)[:, None, None, None]
        disc_radius = rng.uniform(8.0, 14.0, n)[:, None, None, None]
        mask = (np.abs(height) <= half_thickness) & (in_plane <= disc_radius)
        paint(mask, 3, rng.random(n) < (0.9 if slot == 0 else 0.5))

    for slot in range(2):  # tubes: infinite cylinders, the first in every volume
        offset = grid - centres(0.25)[:, None, None, None]
        axis = _unit_vectors(rng, n)
        along = _along(offset, axis)
        distance = np.sqrt(np.maximum((offset**2).sum(-1) - along**2, 0.0))
        radius = rng.uniform(1.5, 2.5, n)[:, None, None, None]
        present = np.ones(n, bool) if slot == 0 else rng.random(n) < 0.5
        paint(distance <= radius, 2, present)

    # A slow linear shading across each volume (a distractor), an offset per volume, noise.
    slope = _unit_vectors(rng, n) * _SHADING
    shading = _along(grid / extent - 0.5, slope) * 2.0
    shift = rng.normal(0.0, _VOLUME_SHIFT, (n, 1, 1, 1))
    noise = rng.normal(0.0, _VOXEL_NOISE, images.shape)
    return (images + shading + shift + noise).astype(np.float32)[..., None], labels
