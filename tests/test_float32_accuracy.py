"""Issue bounds on the float32 routes at the hard cases (2x3x256x256, bce_weight=0) of
docs/semantics.md#float32-facts."""

import numpy as np
import pytest

from benchmarks.float32_accuracy import float32_errors

# The bounds: the existing float32 code is 1.8% off at stride 3 and fails at stride 1.
BOUND = {3: 1e-5, 1: 1e-3}


@pytest.mark.full
@pytest.mark.parametrize("stride", [3, 1])
@pytest.mark.parametrize("case", ["near-perfect", "exact"])
def test_float32_routes_stay_accurate_where_the_literal_algorithm_does_not(case, stride) -> None:
    errors = float32_errors(case, stride, (2, 3, 256, 256))
    assert errors["rmi_jax"] < BOUND[stride]
    assert errors["rmi_torch"] < BOUND[stride]
    # The literal float32 algorithm is the contrast: far off, or failing outright (NaN).
    assert not errors["literal-f32"] < BOUND[stride] or np.isnan(errors["literal-f32"])
