"""The float64 JAX suite runs with x64 on, test by test, in the same process as the rest.

``jax.enable_x64`` switches JAX's x64 mode for the duration of a test (JAX keys its traces and
compilations by the setting, and ``parity_tests/backends.py`` its cached results). Inputs are
turned into JAX arrays inside the tests, where the mode is on. Under ``JAX_ENABLE_X64=1`` the
whole process has it on and the switch changes nothing.
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield
