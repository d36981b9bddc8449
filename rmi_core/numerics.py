"""The statistics' numerics, shared so that both backends round alike: the log offset, the
shift of the two-pass factorisation and the smallest ``epsilon`` it serves, the chunk sizes,
and which maps take the lag-product statistics."""

from __future__ import annotations

import math

from rmi_core.geometry import Sizes, formatted, region_size, window_grid

# The reference adds this inside the log of each Cholesky diagonal entry ("log trace" route).
CHOLESKY_LOG_OFFSET = 1e-8

# Bytes of region vectors one chunk of the statistics may hold, by platform. On a CPU a chunk
# that fits a core's cache is fastest; an accelerator takes every map at once (one large batch
# beats many small kernels) unless they pass this budget, then a few large chunks. 512 MB holds
# the region vectors of 8x21x512x512 float32 inputs at stride 3 (345 MB) in one batch.
CHUNK_BYTES = {"cpu": 2 << 20, "accelerator": 512 << 20}

# Pass one of the Cholesky QR factors J + shift I, with shift = (units) * u * trace(J): u the
# unit roundoff of the statistics' dtype. The Cholesky factorisation itself needs about one unit
# per row of J (k = 2d rows); the Gram matrix Z Z^T rounds like a sum of L products, about
# sqrt(L) units (measured: 0.7 sqrt(L) in a float64 Gram whose product was split across two
# threads, enough to fail at shift = k units and epsilon = 1e-9), so it gets twice that.
SHIFT_UNITS_PER_ROW = 1.0
SHIFT_UNITS_PER_SQRT_WINDOW = 2.0

# Windows per map from which float64 statistics come from lag products rather than region
# vectors (docs/computation.md#lag-products). A lag-product program has a few thousand small
# operations whatever the map's size, so it compiles in about 6-7 s against 1.2 s, and below
# this size the region vectors also run faster: on the 2-core AMD EPYC host, value and gradient
# of 32 maps took 2.4 ms (region vectors) against 3.7 ms (lag products) at 26x26 windows, and
# 4.7 ms against 3.1 ms at 30x30.
LAG_PRODUCTS_MIN_WINDOWS = 28 * 28


def uses_lag_products(shape: Sizes, radius: Sizes, step: Sizes, weighted: bool) -> bool:
    """Whether the float64 statistics of maps of spatial ``shape`` come from lag products:
    images (two spatial axes), windows at spacing 1, without weights, and at least
    :data:`LAG_PRODUCTS_MIN_WINDOWS`.

    Volumes take region vectors: a 3x3x3 region has 125 lags and 27 edge slabs per lag, and on
    the benchmark's volume (2x4x64x96x96, AMD EPYC) that program lowered in 56 s and compiled in
    140 s to run no faster than region vectors (222 against 219 ms), which compile in 6 s.
    """
    if len(shape) != 2 or weighted or max(step) != 1:
        return False
    return math.prod(window_grid(shape, radius, step)) >= LAG_PRODUCTS_MIN_WINDOWS


def shift_units(rows: int, windows: int) -> float:
    """Pass one's shift in units of ``u * trace(J)`` for a ``rows x windows`` region matrix."""
    return SHIFT_UNITS_PER_ROW * rows + SHIFT_UNITS_PER_SQRT_WINDOW * math.sqrt(windows)


def minimum_epsilon(d: int, windows: int, unit_roundoff: float) -> float:
    """The smallest ``epsilon`` the two-pass factorisation serves in a dtype of ``unit_roundoff``,
    for regions of ``d`` cells and ``windows`` windows.

    Pass two factors a Gram matrix whose smallest eigenvalue is about ``epsilon / shift``; below
    one unit roundoff it is rounding noise and the factorisation can fail. With values in [0, 1]
    each centred row of the region matrix has squared norm at most ``windows / 4``, so
    ``trace(J) <= k windows / 4`` bounds the shift, and this bound on ``epsilon`` follows.
    """
    rows = 2 * d
    largest_trace = rows * windows / 4
    return unit_roundoff**2 * shift_units(rows, windows) * largest_trace


def check_epsilon(
    epsilon: float, *, radius: Sizes, grid: Sizes, unit_roundoff: float, dtype_name: str
) -> None:
    """``epsilon`` at least :func:`minimum_epsilon` for a ``grid`` of ``radius`` windows."""
    smallest = minimum_epsilon(region_size(radius), math.prod(grid), unit_roundoff)
    if epsilon < smallest:
        raise ValueError(
            f"epsilon={epsilon:g} is below {smallest:.2g}, the smallest ridge that {dtype_name} "
            f"statistics resolve for {formatted(grid)} windows of {formatted(radius)} regions: "
            f"the region data are rounded to a larger size than sqrt(epsilon), so the "
            f"factorisation could fail; use a larger epsilon, or float64 statistics "
            f"(use_double_precision=True), which resolve much smaller ones"
        )


def maps_per_chunk(num_maps: int, num_windows: int, d: int, itemsize: int, budget: int) -> int:
    """How many region matrices one chunk of the statistics takes: as many as keep its region
    vectors (``2d x num_windows`` entries of ``itemsize`` bytes each) within ``budget`` bytes,
    at least one and at most ``num_maps``."""
    per_map = 2 * d * num_windows * itemsize
    return max(1, min(num_maps, budget // per_map))
