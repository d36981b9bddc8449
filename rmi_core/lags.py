"""The plan of the region statistics as lag products, for any spatial rank: which products of two
maps, summed over which blocks, give which entries of the region covariances, and how the
gradient is put back together. NumPy only, static (shapes and options), shared by both backends.

Notation (docs/computation.md#lag-products): maps of spatial shape ``S`` (one size per axis),
regions of ``R`` (one side per axis), ``d = prod(R)``, window origins on the grid ``w`` with
``g = S - R + 1`` positions per axis (windows at spacing 1), offsets ``a`` inside a region in
row-major order. The entry of the region Gram for offsets ``a`` and ``b = a + delta`` is

    sum_w x(w + a) x'(w + b) = sum_u q(u) [u - a on the grid],   q(u) = x(u) x'(u + delta),

a sum of the lag product ``q`` over the grid shifted by ``a``. Along one axis a pixel ``u`` lies
in the shifted grid of the offsets ``a`` with ``0 <= u - a < g``: of all of them in the *bulk*
``R - 1 <= u < g``, of some on the two *edges*. The sums over the bulk are shared by every
offset; only the thin edges differ. Each axis is split into groups (start edge, bulk, end edge),
each block of the product of groups is summed once per lag (the bulk axes reduced, the edge axes
kept), and each offset's sum adds up the blocks through the indicator ``[0 <= u - a < g]``. The
gradient runs the other way: each pixel gets the lag products' coefficients, constant over the
bulk and read off the indicator on the edges.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np

# Map indices in the joint region vector [P; Y].
PREDICTION, TARGET = 0, 1


@dataclass(frozen=True)
class Group:
    """A run ``[start, stop)`` of one axis: ``reduced`` (the bulk, summed over) or kept (an
    edge, one index at a time), and the indicator rows ``[start <= u < stop, a]``."""

    start: int
    stop: int
    reduced: bool
    indicator: np.ndarray  # [stop - start, R] of 0/1 (kept groups; the bulk's rows are all 1)


@dataclass(frozen=True)
class Lag:
    """One lag product ``x_first(u) x_second(u + shift)``; ``second=None`` is ``x_first`` alone
    (the window sums of the means)."""

    first: int
    second: int | None
    shift: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """Everything static about the lag-product statistics of one map shape and region.

    ``blocks``: the product of each axis' groups. ``lags``: the forward's products (the two
    maps' sums first, then P with P and Y with Y for half the shifts, as the Gram is symmetric,
    then P with Y for all). Their window sums ``T[lag, a]`` (``[len(lags), d]``, flattened)
    give the joint Gram of ``[P; Y]`` through ``gram_source`` (``[2d, 2d]`` indices into the
    flattened ``T``) and the window sums of the region vectors through ``sum_source`` (``[2d]``).

    The backward runs the other way. ``cotangent_source`` (``[len(lags) * d, 2]``) gives, for
    each flattened ``T``, the entries of the flattened ``[dGram (2d * 2d); dsums (2d)]`` whose sum
    is its cotangent (index ``4d^2 + 2d`` where there is one entry: a zero appended).
    ``gradient_terms[m]``: map ``m``'s gradient as products of the maps with coefficients:
    ``(source map or None for the constant 1, shift)`` per term; ``coefficient_source[m]``
    (``[terms, d, 2]``) the flattened ``T`` cotangents that sum to each term's coefficient at
    each offset (``len(lags) * d``: a zero appended).
    """

    shape: tuple[int, ...]
    radius: tuple[int, ...]
    grid: tuple[int, ...]
    groups: tuple[tuple[Group, ...], ...]
    lags: tuple[Lag, ...]
    gram_source: np.ndarray
    sum_source: np.ndarray
    cotangent_source: np.ndarray
    gradient_terms: tuple[tuple[Lag, ...], tuple[Lag, ...]]
    coefficient_source: tuple[np.ndarray, np.ndarray]

    @property
    def blocks(self) -> list[tuple[Group, ...]]:
        return list(itertools.product(*self.groups))

    @property
    def padding(self) -> tuple[int, ...]:
        """Zeros around a map so that ``x(u + shift)`` exists for every pixel and shift."""
        return tuple(r - 1 for r in self.radius)


def offsets(radius: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The offsets of a region, in row-major order (``F.unfold``'s, the region vectors')."""
    return list(np.ndindex(*radius))


def axis_indicator(size: int, radius: int) -> np.ndarray:
    """``[u - a on the grid]`` for the pixels ``u`` of an axis of ``size`` and the offsets ``a``
    of ``radius`` (windows at spacing 1): ``[size, radius]`` of 0/1."""
    grid = size - radius + 1
    u = np.arange(size)[:, None]
    a = np.arange(radius)[None, :]
    return ((u - a >= 0) & (u - a < grid)).astype(np.float64)


def axis_groups(size: int, radius: int) -> tuple[Group, ...]:
    """The groups of one axis of ``size`` pixels for windows of ``radius`` at spacing 1."""
    grid = size - radius + 1
    indicator = axis_indicator(size, radius)
    bulk_start, bulk_stop = radius - 1, grid
    if bulk_stop <= bulk_start:  # too short for a bulk: every pixel is an edge pixel
        return (Group(0, size, False, indicator),)
    runs = [(0, bulk_start, False), (bulk_start, bulk_stop, True), (bulk_stop, size, False)]
    return tuple(
        Group(start, stop, reduced, indicator[start:stop])
        for start, stop, reduced in runs
        if stop > start
    )


def _shifts(radius: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(1 - r, r) for r in radius)))


@cache
def plan(shape: tuple[int, ...], radius: tuple[int, ...]) -> Plan:
    """The :class:`Plan` for maps of spatial ``shape`` and regions of ``radius`` (spacing 1)."""
    shape, radius = tuple(shape), tuple(radius)
    box = offsets(radius)
    d = len(box)
    index = {a: i for i, a in enumerate(box)}
    shifts = _shifts(radius)
    zero = tuple(0 for _ in radius)
    half = [s for s in shifts if s >= zero]  # lexicographic: each +-shift pair once, and 0
    lags = (
        Lag(PREDICTION, None, zero),
        Lag(TARGET, None, zero),
        *(Lag(PREDICTION, PREDICTION, s) for s in half),
        *(Lag(TARGET, TARGET, s) for s in half),
        *(Lag(PREDICTION, TARGET, s) for s in shifts),
    )
    gram_source = np.full((2 * d, 2 * d), -1, np.int64)
    sum_source = np.full(2 * d, -1, np.int64)
    for number, lag in enumerate(lags):
        for a in box:
            flat = number * d + index[a]
            if lag.second is None:
                sum_source[lag.first * d + index[a]] = flat
                continue
            b = tuple(i + s for i, s in zip(a, lag.shift, strict=True))
            if b not in index:
                continue
            row, col = lag.first * d + index[a], lag.second * d + index[b]
            gram_source[row, col] = gram_source[col, row] = flat
    assert (gram_source >= 0).all() and (sum_source >= 0).all()
    # Where each flattened T's cotangent comes from: the Gram entries it fills, or the sum.
    flat_gram = np.concatenate([gram_source.ravel(), sum_source])
    cotangent_source = np.full((len(lags) * d, 2), flat_gram.size, np.int64)
    for entry, target in enumerate(flat_gram):
        row = cotangent_source[target]
        row[int(row[0] != flat_gram.size)] = entry
    # Each lag product's two factors pass its cotangent to two gradient terms.
    gradient_terms, coefficient_source = [], []
    for m in (PREDICTION, TARGET):
        terms = (*(Lag(m, source, s) for source in (PREDICTION, TARGET) for s in shifts),)
        gradient_terms.append((*terms, Lag(m, None, zero)))
        coefficient_source.append(np.full((len(terms) + 1, d, 2), len(lags) * d, np.int64))
    number_of = [{(t.second, t.shift): i for i, t in enumerate(ts)} for ts in gradient_terms]

    def add(m: int, term: tuple, a: tuple, flat: int) -> None:
        row = coefficient_source[m][number_of[m][term], index[a]]
        row[int(row[0] != len(lags) * d)] = flat

    for number, lag in enumerate(lags):
        for a in box:
            flat = number * d + index[a]
            if lag.second is None:
                add(lag.first, (None, zero), a, flat)
                continue
            b = tuple(i + s for i, s in zip(a, lag.shift, strict=True))
            if b not in index:
                continue
            back = tuple(-s for s in lag.shift)
            add(lag.first, (lag.second, lag.shift), a, flat)
            add(lag.second, (lag.first, back), b, flat)
    return Plan(
        shape=shape,
        radius=radius,
        grid=tuple(n - r + 1 for n, r in zip(shape, radius, strict=True)),
        groups=tuple(axis_groups(n, r) for n, r in zip(shape, radius, strict=True)),
        lags=lags,
        gram_source=gram_source,
        sum_source=sum_source,
        cotangent_source=cotangent_source,
        gradient_terms=(gradient_terms[0], gradient_terms[1]),
        coefficient_source=(coefficient_source[0], coefficient_source[1]),
    )
