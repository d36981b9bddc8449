"""Which fixtures the default test tier checks; the full tier (``pytest -m full``) checks the rest.

Each JAX result costs a compilation per fixture, dtype and layout, so the default tier runs every
parity test on a subset of the fixtures chosen to cover every option value of both APIs, and
masks per downsampling method, ``exclude_ignored`` per pool way, finite-difference gradients per
downsampling, near-singular statistics, one example, one class and odd sizes. ``test_tiers.py``
checks that the subsets keep covering everything the whole set covers, so a fixture with a new
option value must join the subset. The equivalence tests (layout, jit, vmap,
``reduction="none"``) compute the same loss two ways and need only a few fixtures by default.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import pytest

from parity_tests.fixtures import Fixture

# name: what it adds to the rest of the subset
DEFAULT_DENSE = {
    "dense-default-logits": "the defaults on logits (radius 3, max pooling by 3), FD gradient",
    "dense-mask-blocks-bce0-plain-logdet": "mask with max pooling, bce_weight 0, plain log-det",
    "dense-mask-blocks-bce1": "bce_weight 1 (BCE only), masked",
    "dense-mask-blocks-probabilities-avg": "mask with average pooling by 2, probabilities",
    "dense-mask-blocks-region-extraction": "mask with region extraction",
    "dense-radius1": "radius 1",
    "dense-avg-radius2-stride2-soft": "radius 2, average pooling, soft targets",
    "dense-radius4-stride4-region-40": "radius 4, stride 4, region extraction unmasked",
    "dense-radius3-stride1-minimum": "stride 1 at the minimum size (3x5, odd), one example",
    "dense-near-perfect-stride1": "near-singular statistics (prediction a function of the target)",
    "dense-epsilon1e-2": "another epsilon",
    "dense-c1": "one class",
    "dense-saturated-max": "probabilities exactly 0 and 1 (the clip's bounds), FD gradient",
    "dense-saturated-pixel-pair": "the smallest map, two windows of one pixel, saturated",
    "dense-volume-anisotropic-133": "a volume, 1x3x3 regions and pooling, FD gradient",
    "dense-volume-avg-soft": "a volume, average pooling, soft targets, FD gradient",
    "dense-volume-region-extraction-probabilities": "a volume, region extraction, FD gradient",
    "dense-volume-mask-sparse-anisotropic-avg": "a volume, scattered mask, 2x3x3 regions",
    "dense-volume-near-perfect-stride1": "a volume, near-singular 54x54 statistics, stride 1",
}
DEFAULT_LABELS = {
    "labels-default": "the defaults (max pooling by 3, radius 3), FD gradient",
    "labels-avg": "average pooling (way 1), FD gradient",
    "labels-interp": "interpolation (way 2), FD gradient",
    "labels-exclude-ignored": "exclude_ignored with max pooling, FD gradient",
    "labels-exclude-ignored-scattered-way1-pool2": "scattered ignored pixels excluded, way 1 by 2",
    "labels-exclude-ignored-interp-pool4-odd-33x29": "excluded, way 2 by 4, radius 2, odd sizes",
    "labels-pool1": "no pooling (pool size 1), FD gradient",
    "labels-radius1": "radius 1, FD gradient",
    "labels-radius4": "radius 4",
    "labels-lambda-way0": "lambda_way 0, FD gradient",
    "labels-lambda0": "loss_weight_lambda 0, FD gradient",
    "labels-lambda1": "loss_weight_lambda 1, FD gradient",
    "labels-c1": "one class, FD gradient",
    "labels-ignore-index-in-range": "an ignore_index that is a class number",
    "labels-odd-33x29-avg-pool2": "one example, average pooling by 2, odd sizes",
    "labels-saturated": "saturated logits (sigmoid exactly 1 in float32), FD gradient",
    "labels-volume-anisotropic-133": "a label volume, 1x3x3 regions and pooling, FD gradient",
    "labels-volume-avg-pool2": "a label volume, way 1 by 2, FD gradient",
    "labels-volume-interp-pool2": "a label volume, way 2 (trilinear) by 2, FD gradient",
    "labels-volume-interp-anisotropic-odd": "a label volume, way 2 by 1x4x4, odd sizes",
    "labels-volume-exclude-ignored-scattered-way0": "scattered ignored voxels excluded, way 0",
    "labels-volume-exclude-ignored-scattered-way1": "scattered ignored voxels excluded, way 1",
    "labels-volume-exclude-ignored-scattered-way2": "scattered ignored voxels excluded, way 2",
}
# The equivalence tests' few fixtures by default: plain, masked, and near-singular statistics
# (where float32 rounding matters most).
DEFAULT_EQUIVALENCE = {
    "dense-default-logits",
    "dense-mask-blocks-probabilities-avg",
    "dense-near-perfect-stride1",
    "labels-default",
    "labels-exclude-ignored-scattered-way1-pool2",
    "labels-interp",
}

# The eager-vs-jit tests run eagerly, op by op (seconds per fixture): one fixture per API by
# default, the one with the most float32 rounding in its gradient.
DEFAULT_EAGER = {"dense-near-perfect-stride1", "labels-interp"}


def tiered(fixtures: Iterable[Fixture], default: Iterable[str]) -> list:
    """``fixtures`` as pytest parameters, those not named in ``default`` in the full tier.

    Each is in the pytest-xdist group of its fixture (``--dist loadgroup``), so that every test
    of one fixture runs on the worker that holds its cached results (``backends.py``).
    """
    default = set(default)
    return [
        pytest.param(
            f,
            id=f.name,
            marks=[pytest.mark.xdist_group(f.name)]
            + ([] if f.name in default else [pytest.mark.full]),
        )
        for f in fixtures
    ]


def effective_options(fixture: Fixture) -> dict:
    """The fixture's options with each one it leaves out at the loss's default."""
    import rmi_torch

    loss = (
        rmi_torch.rmi_loss_from_labels if fixture.name.startswith("labels-") else rmi_torch.rmi_loss
    )
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(loss).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **fixture.options}


def features(fixture: Fixture) -> set[tuple]:
    """What a fixture exercises: every option value, and the cases that take their own route."""
    options = effective_options(fixture)
    found = {("option", name, value) for name, value in options.items()}
    n, c, *spatial = fixture.pred.shape
    found |= {
        ("finite-difference gradient", fixture.grad_fd is not None),
        ("near-singular", fixture.degenerate),
        ("one example", n == 1),
        ("one class", c == 1),
        ("odd size", any(size % 2 == 1 for size in spatial)),
        ("spatial axes", len(spatial)),
    }
    route = options.get("rmi_pool_way", options.get("downsampling_method"))
    if fixture.grad_fd is not None:
        found.add(("finite-difference gradient through", route, len(spatial)))
    if fixture.valid_mask is not None:
        found.add(("mask with", route))
    if options.get("exclude_ignored"):
        found.add(("exclude_ignored with pool way", route, len(spatial)))
    return found
