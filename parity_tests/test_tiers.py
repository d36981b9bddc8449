"""The default tier's fixture subsets cover everything the whole fixture set covers."""

import pytest

from parity_tests.fixtures import load_fixtures
from parity_tests.tiers import (
    DEFAULT_DENSE,
    DEFAULT_EAGER,
    DEFAULT_EQUIVALENCE,
    DEFAULT_LABELS,
    features,
)


@pytest.mark.parametrize(
    "pattern, default", [("dense-*.npz", DEFAULT_DENSE), ("labels-*.npz", DEFAULT_LABELS)]
)
def test_default_subset_covers_every_feature_of_the_fixtures(pattern, default) -> None:
    fixtures = {f.name: f for f in load_fixtures(pattern)}
    assert set(default) <= set(fixtures), set(default) - set(fixtures)
    everything = set().union(*(features(f) for f in fixtures.values()))
    covered = set().union(*(features(fixtures[name]) for name in default))
    assert covered == everything, sorted(everything - covered, key=str)


def test_equivalence_fixtures_are_in_the_default_subsets() -> None:
    assert DEFAULT_EQUIVALENCE | DEFAULT_EAGER <= set(DEFAULT_DENSE) | set(DEFAULT_LABELS)
