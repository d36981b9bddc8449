"""A seeded, download-free synthetic segmentation dataset shared by the two training demos.

Each image is a noisy, textured RGB-ish canvas with shapes painted on it. Label 0 is the
background; the object classes are (in painting order, later ones paint over earlier ones):

1. filled ellipses and discs,
2. axis-aligned and rotated rectangles,
3. *thin* structures: straight lines and sine-like curves one to three pixels wide,
4. (when ``num_classes == 5``) small rings, i.e. annuli a couple of pixels thick.

Some objects are placed so that they *touch* an object of another class (a rectangle abutting
a disc), which gives class-to-class boundaries with no background between them. Thin
structures cross everything else. These are the regions where a per-pixel loss (BCE) and a
structural one (RMI) are expected to differ.

Colours are class-dependent but deliberately close to each other and to the background, with
a per-image colour shift, per-object jitter, a class-dependent texture and strong per-pixel
noise, so a pixel's colour alone is a weak cue and the network has to use spatial context.

Everything is vectorised over the images: Python loops run only over the (few) shape slots.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLASS_NAMES", "make_dataset", "one_hot"]

#: Human-readable class names, index = label value (only the first ``num_classes`` are used).
CLASS_NAMES: tuple[str, ...] = ("background", "ellipse", "rectangle", "thin", "ring")

# Mean colours per class (RGB in [0, 1]). They are close on purpose: the colour gap between
# classes is of the order of the per-pixel noise, so the task is learnable but not trivial.
_CLASS_COLOURS = np.array(
    [
        [0.45, 0.45, 0.45],  # background
        [0.70, 0.45, 0.35],  # ellipse: warmer
        [0.40, 0.60, 0.40],  # rectangle: greener
        [0.35, 0.40, 0.70],  # thin: bluer
        [0.65, 0.60, 0.30],  # ring: yellowish
    ],
    dtype=np.float32,
)
# Per-pixel Gaussian noise std: comparable to the class colour gaps (~0.25-0.35 in RGB).
_PIXEL_NOISE = 0.12
# Per-image global colour shift std (simulates lighting changes).
_IMAGE_SHIFT = 0.06
# Per-object colour jitter std.
_OBJECT_JITTER = 0.05


def one_hot(labels: np.ndarray, num_classes: int, dtype: type = np.float32) -> np.ndarray:
    """One-hot encode an integer label map along a new trailing axis.

    Args:
        labels: integer array of any shape, values in ``[0, num_classes)``.
        num_classes: number of classes ``C``.
        dtype: dtype of the result.

    Returns:
        Array of shape ``labels.shape + (C,)`` with a single 1 per position (NHWC for
        ``[N, H, W]`` labels; transpose to NCHW for PyTorch).
    """
    return (labels[..., None] == np.arange(num_classes)).astype(dtype)


def _rotated(
    yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to per-image centres ``(cy, cx)``, rotated by ``-theta``.

    ``yy, xx`` are ``[1, H, W]`` grids; the per-image parameters are ``[N]`` and broadcast to
    ``[N, H, W]``.
    """
    dy = yy - cy[:, None, None]
    dx = xx - cx[:, None, None]
    c = np.cos(theta)[:, None, None]
    s = np.sin(theta)[:, None, None]
    return c * dx + s * dy, -s * dx + c * dy


def _paint(
    images: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    cls: int,
    rng: np.random.Generator,
) -> None:
    """Paint ``mask`` ([N, H, W] bool) with class ``cls`` in place: label and a jittered colour."""
    n = images.shape[0]
    colour = _CLASS_COLOURS[cls] + rng.normal(0.0, _OBJECT_JITTER, size=(n, 3)).astype(np.float32)
    labels[mask] = cls
    images[:] = np.where(mask[..., None], colour[:, None, None, :], images)


def _ellipse_mask(
    yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, ry, rx, theta
) -> np.ndarray:
    u, v = _rotated(yy, xx, cy, cx, theta)
    return (u / rx[:, None, None]) ** 2 + (v / ry[:, None, None]) ** 2 <= 1.0


def _rect_mask(
    yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, hh, hw, theta
) -> np.ndarray:
    u, v = _rotated(yy, xx, cy, cx, theta)
    return (np.abs(u) <= hw[:, None, None]) & (np.abs(v) <= hh[:, None, None])


def _thin_mask(
    yy: np.ndarray, xx: np.ndarray, size: int, rng: np.random.Generator, n: int
) -> np.ndarray:
    """A line or a sine-like curve per image, 1-3 px wide, spanning most of the image."""
    cy = rng.uniform(0.2, 0.8, n) * size
    cx = rng.uniform(0.2, 0.8, n) * size
    theta = rng.uniform(0.0, np.pi, n)
    half_len = rng.uniform(0.3, 0.6, n) * size
    half_width = rng.uniform(0.5, 1.2, n)  # 1 to ~2.5 px wide after rasterisation
    # Half the images get a straight line (amplitude 0), the rest a curve.
    amp = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(2.0, 6.0, n))
    freq = rng.uniform(0.08, 0.2, n)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    u, v = _rotated(yy, xx, cy, cx, theta)
    a, f = amp[:, None, None], freq[:, None, None]
    offset = v - a * np.sin(f * u + phase[:, None, None])
    # Divide by the curve's local slope factor so the stroke keeps its width on steep parts.
    slope = np.sqrt(1.0 + (a * f * np.cos(f * u + phase[:, None, None])) ** 2)
    return (np.abs(offset) / slope <= half_width[:, None, None]) & (
        np.abs(u) <= half_len[:, None, None]
    )


def _texture(
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    n: int,
    amplitude: float,
    freq: tuple[float, float],
) -> np.ndarray:
    """A random oriented sinusoid per image, ``[N, H, W, 1]``, frequencies in rad/pixel."""
    fy = rng.uniform(*freq, (n, 1, 1)) * rng.choice([-1.0, 1.0], (n, 1, 1))
    fx = rng.uniform(*freq, (n, 1, 1))
    ph = rng.uniform(0.0, 2 * np.pi, (n, 1, 1))
    return (amplitude * np.sin(fy * yy + fx * xx + ph))[..., None].astype(np.float32)


def make_dataset(
    num_images: int, size: int = 64, num_classes: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a deterministic synthetic segmentation dataset.

    Args:
        num_images: number of images ``N``.
        size: height and width ``S`` of each (square) image.
        num_classes: number of classes including the background, 4 or 5 (see module docs).
        seed: seed of the NumPy generator; the same seed gives bit-identical output.

    Returns:
        ``(images, labels)``: ``images`` float32 ``[N, S, S, 3]`` (roughly in ``[0, 1]`` but not
        clipped, noise included) and ``labels`` int32 ``[N, S, S]`` with values in
        ``[0, num_classes)``.

    Examples:
        >>> images, labels = make_dataset(8, size=32, seed=1)
        >>> images.shape, labels.shape, images.dtype, labels.dtype
        ((8, 32, 32, 3), (8, 32, 32), dtype('float32'), dtype('int32'))
    """
    if num_classes not in (4, 5):
        raise ValueError(f"num_classes must be 4 or 5, got {num_classes}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    rng = np.random.default_rng(seed)
    n = num_images
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = yy[None], xx[None]

    images = np.broadcast_to(_CLASS_COLOURS[0], (n, size, size, 3)).astype(np.float32)
    images = images + _texture(yy, xx, rng, n, amplitude=0.08, freq=(0.03, 0.15))
    labels = np.zeros((n, size, size), dtype=np.int32)

    def radius(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n) * size

    # Ellipses / discs: two slots per image; each slot is present in ~80% of the images.
    disc_params = []
    for _ in range(2):
        cy, cx = radius(0.15, 0.85), radius(0.15, 0.85)
        ry = radius(0.07, 0.18)
        # Half of them are discs (rx == ry), half elongated ellipses.
        rx = np.where(rng.random(n) < 0.5, ry, radius(0.07, 0.18))
        theta = rng.uniform(0.0, np.pi, n)
        present = rng.random(n) < 0.8
        _paint(
            images,
            labels,
            _ellipse_mask(yy, xx, cy, cx, ry, rx, theta) & present[:, None, None],
            1,
            rng,
        )
        disc_params.append((cy, cx, np.minimum(rx, ry), present))

    # Rectangles: one free slot, plus one that touches the first disc (different classes in
    # contact, no background between them), rotated or not.
    for touching in (False, True):
        hh, hw = radius(0.06, 0.15), radius(0.06, 0.15)
        theta = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.0, np.pi, n))
        if touching:
            dcy, dcx, dr, present = disc_params[0]
            # Put the rectangle's near edge on the disc's inscribed circle along a random
            # direction, so the two shapes share (or slightly overlap) a boundary.
            phi = rng.uniform(0.0, 2 * np.pi, n)
            theta = phi  # align the rectangle's u axis with the contact direction
            dist = dr + hw
            cy, cx = dcy + dist * np.sin(phi), dcx + dist * np.cos(phi)
        else:
            cy, cx = radius(0.15, 0.85), radius(0.15, 0.85)
            present = rng.random(n) < 0.8
        mask = _rect_mask(yy, xx, cy, cx, hh, hw, theta) & present[:, None, None]
        _paint(images, labels, mask, 2, rng)

    if num_classes == 5:
        # Rings: annuli ~2 px thick, painted before thin structures so lines still cross them.
        cy, cx = radius(0.15, 0.85), radius(0.15, 0.85)
        r_out = radius(0.07, 0.13)
        thick = rng.uniform(1.5, 3.0, n)
        d = np.sqrt((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)
        mask = (d <= r_out[:, None, None]) & (d >= (r_out - thick)[:, None, None])
        _paint(images, labels, mask & (rng.random(n) < 0.7)[:, None, None], 4, rng)

    # Thin structures: one or two per image, painted last so they cross other objects.
    for slot in range(2):
        present = np.ones(n, bool) if slot == 0 else rng.random(n) < 0.5
        mask = _thin_mask(yy, xx, size, rng, n) & present[:, None, None]
        _paint(images, labels, mask, 3, rng)

    # Background: a slow shading gradient (a distractor). Objects: an extra fine stripe
    # texture, a weak cue that only a model looking at neighbourhoods can use.
    images = (
        images + _texture(yy, xx, rng, n, amplitude=0.05, freq=(0.8, 1.4)) * (labels > 0)[..., None]
    )
    shift = rng.normal(0.0, _IMAGE_SHIFT, size=(n, 1, 1, 3)).astype(np.float32)
    noise = rng.normal(0.0, _PIXEL_NOISE, size=images.shape).astype(np.float32)
    return (images + shift + noise).astype(np.float32), labels
