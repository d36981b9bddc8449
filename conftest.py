"""Shared pytest set-up for ``parity_tests`` and ``tests``."""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_executables():
    """Drop JAX's compiled executables after each test module.

    Each one keeps a few memory mappings of generated code, and the suite compiles thousands
    (every fixture, shape and hypothesis example is a new program). Kept for the whole run,
    they reach the kernel's per-process limit (``vm.max_map_count``, 65530 by default), where
    the next compilation crashes the interpreter with a segmentation fault.
    """
    yield
    jax.clear_caches()
