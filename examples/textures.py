"""A texture-mosaic segmentation dataset built from real photographs that ship with scikit-image.

scikit-image's wheel bundles three 512x512 greyscale texture photographs in ``skimage/data``
(``brick.png``, ``grass.png`` and ``gravel.png``, all under CC0). Each image of this dataset is a
random partition of the canvas into regions, and each region is filled with a crop of one of the
photographs, so the label of every pixel is exact (it says which photograph the pixel came from)
and the pictures are not drawn by our own generator. The files are read from the installed
package: nothing is downloaded.

- Layout: a Voronoi partition of 2-6 random sites, its coordinates bent by a smooth random
  displacement so the borders are curves, not straight lines. Each region gets a random texture;
  the first two regions always get different ones, so every image has a border between textures.
- Filling: per image and texture, one crop at a random position, flipped at random. The train
  set crops the top rows of each photograph and the test set the bottom :data:`TEST_ROWS` rows,
  so held-out images show parts of the photographs that training never saw.
- Intensity: each photograph is standardised once (zero mean, unit variance), so the average
  brightness of a photograph is no cue, and each region gets a random gain and offset on top, so
  the network has to tell the textures apart by their structure. The grey value is repeated
  in the three input channels the demos' U-Net takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from examples.common import IMAGE_SIZE, NUM_TEST, NUM_TRAIN, Data
from examples.synthetic import one_hot

__all__ = ["TEST_ROWS", "TEXTURE_NAMES", "load_data", "make_mosaics", "photographs"]

#: Class names, index = label value: the photographs' file names in ``skimage/data``.
TEXTURE_NAMES: tuple[str, ...] = ("brick", "grass", "gravel")
#: Rows at the bottom of each 512-row photograph that only the test set crops from.
TEST_ROWS = 128
_MAX_SITES = 6  # Voronoi sites per image: 2 to this many
_WARP_AMPLITUDE = (2.0, 6.0)  # pixels: how far the displacement bends the region borders
_WARP_WAVELENGTH = (16.0, 48.0)  # pixels: how tightly the borders wind
_GAIN = (0.75, 1.3)  # per-region contrast factor on the standardised photograph
_OFFSET_STD = 0.25  # per-region brightness shift, in units of the photograph's std
# Maps the standardised grey value to roughly the synthetic shapes' range ([0, 1] for +-2.5 std).
_DISPLAY_MEAN, _DISPLAY_SCALE = 0.5, 0.2


def photographs() -> np.ndarray:
    """The three texture photographs, standardised per photograph: float32 ``[3, 512, 512]``.

    Read from the installed scikit-image package's ``data`` folder, never from the network.

    Raises:
        FileNotFoundError: scikit-image is installed without the photographs.
    """
    import skimage
    from skimage.io import imread

    folder = Path(skimage.__file__).parent / "data"
    stack = []
    for name in TEXTURE_NAMES:
        path = folder / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the texture study needs the photographs that scikit-image "
                f"{skimage.__version__} ships in its wheel (pip install scikit-image)"
            )
        grey = imread(path).astype(np.float64)
        stack.append((grey - grey.mean()) / grey.std())
    return np.stack(stack).astype(np.float32)


def _layout(size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Region labels ``[N, S, S]``: 0..5, the index of the nearest site under a smooth warp."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # A random plane wave per axis bends the coordinates before the nearest-site search.
    warped = []
    for base in (yy, xx):
        amplitude = rng.uniform(*_WARP_AMPLITUDE, (n, 1, 1))
        wavelength = rng.uniform(*_WARP_WAVELENGTH, (n, 1, 1))
        angle = rng.uniform(0.0, 2 * np.pi, (n, 1, 1))
        phase = rng.uniform(0.0, 2 * np.pi, (n, 1, 1))
        along = np.cos(angle) * yy + np.sin(angle) * xx
        warped.append(base + amplitude * np.sin(2 * np.pi * along / wavelength + phase))
    sites = rng.uniform(0.0, size, (n, _MAX_SITES, 2)).astype(np.float32)
    num_sites = rng.integers(2, _MAX_SITES + 1, n)
    dist = (warped[0][:, None] - sites[:, :, 0, None, None]) ** 2 + (
        warped[1][:, None] - sites[:, :, 1, None, None]
    ) ** 2  # [N, sites, S, S]
    unused = np.arange(_MAX_SITES)[None, :] >= num_sites[:, None]
    dist[unused] = np.inf
    return np.argmin(dist, axis=1)


def make_mosaics(
    num_images: int, size: int = 64, *, split: str = "train", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a deterministic texture-mosaic dataset.

    Args:
        num_images: number of images ``N``.
        size: height and width ``S`` of each (square) image, at most ``TEST_ROWS``.
        split: ``"train"`` crops the photographs above their bottom :data:`TEST_ROWS` rows,
            ``"test"`` crops those rows only.
        seed: seed of the NumPy generator; the same seed gives bit-identical output.

    Returns:
        ``(images, labels)``: ``images`` float32 ``[N, S, S, 3]`` (the grey value in all three
        channels) and ``labels`` int32 ``[N, S, S]``, values in ``[0, 3)`` indexing
        :data:`TEXTURE_NAMES`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 16 <= size <= TEST_ROWS:
        raise ValueError(f"size must be between 16 and {TEST_ROWS} pixels, got {size}")
    photos = photographs()
    num_classes, height, width = photos.shape
    # The range of a crop's top row: above the test rows, or inside them.
    first_row, last_row = (0, height - TEST_ROWS - size)
    if split == "test":
        first_row, last_row = height - TEST_ROWS, height - size
    rng = np.random.default_rng(seed)
    n = num_images

    regions = _layout(size, n, rng)
    region_class = rng.integers(0, num_classes, (n, _MAX_SITES))
    # Regions 0 and 1 always exist (2 sites at least): give them different textures.
    region_class[:, 1] = (region_class[:, 0] + rng.integers(1, num_classes, n)) % num_classes
    labels = np.take_along_axis(region_class, regions.reshape(n, -1), axis=1).reshape(regions.shape)

    # One crop per image and texture: [N, C, S, S] gathered by fancy indexing.
    top = rng.integers(first_row, last_row + 1, (n, num_classes))
    left = rng.integers(0, width - size + 1, (n, num_classes))
    offsets = np.arange(size)
    flip_y, flip_x = rng.random((2, n, num_classes)) < 0.5
    ys = top[..., None] + np.where(flip_y[..., None], offsets[::-1], offsets)
    xs = left[..., None] + np.where(flip_x[..., None], offsets[::-1], offsets)
    classes = np.arange(num_classes)[None, :, None, None]
    crops = photos[classes, ys[..., :, None], xs[..., None, :]]

    # Gain and offset per region: a texture's brightness and contrast vary from region to region.
    gain = rng.uniform(*_GAIN, (n, _MAX_SITES))
    offset = rng.normal(0.0, _OFFSET_STD, (n, _MAX_SITES))
    grey = np.take_along_axis(crops, labels[:, None], axis=1)[:, 0]
    grey = grey * np.take_along_axis(gain, regions.reshape(n, -1), axis=1).reshape(regions.shape)
    grey = grey + np.take_along_axis(offset, regions.reshape(n, -1), axis=1).reshape(regions.shape)
    images = _DISPLAY_MEAN + _DISPLAY_SCALE * grey
    return np.repeat(images[..., None], 3, axis=-1).astype(np.float32), labels.astype(np.int32)


def load_data(seed: int) -> Data:
    """The study's texture set, sized like the shapes demo's: train and test from seeds
    ``2 * seed`` and ``2 * seed + 1``, cropped from disjoint rows of the photographs."""
    train_x, train_y = make_mosaics(NUM_TRAIN, IMAGE_SIZE, split="train", seed=2 * seed)
    test_x, test_y = make_mosaics(NUM_TEST, IMAGE_SIZE, split="test", seed=2 * seed + 1)
    return Data(train_x, one_hot(train_y, len(TEXTURE_NAMES)), test_x, test_y)
