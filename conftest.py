"""Shared pytest set-up for ``parity_tests`` and ``tests``."""

import os
from pathlib import Path

import jax
import pytest

# Each compiled JAX executable keeps a few memory mappings of generated code, and the suite
# compiles thousands of programs (every fixture, shape and hypothesis example is a new one). At
# the kernel's per-process limit on mappings the next compilation crashes the interpreter with
# a segmentation fault, so the caches are dropped well before that.
_MAPS = Path("/proc/self/maps")
_MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")


def _mapping_count_and_limit() -> tuple[int, int] | None:
    """This process's memory mappings and the kernel's limit on them; ``None`` off Linux."""
    try:
        with _MAPS.open() as maps:
            count = sum(1 for _ in maps)
        return count, int(_MAX_MAP_COUNT.read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture(autouse=True)
def _release_compiled_executables():
    """After a test, drop JAX's compiled executables once the mappings pass half the limit."""
    yield
    usage = _mapping_count_and_limit()
    if usage is not None and usage[0] > usage[1] // 2:
        jax.clear_caches()


# pytest-xdist workers for ``-n auto`` (pyproject's addopts). Each worker imports JAX and
# PyTorch, collects the whole suite and compiles and caches its own programs (over 2 GB each in
# the default tier): past a few workers, start-up and memory outgrow what this suite gains.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """One worker per core, at most MAX_WORKERS; none (a single process) when ``RMI_TEST_DEVICE``
    names an accelerator, which one process should own. ``PYTEST_XDIST_AUTO_NUM_WORKERS``
    overrides both."""
    requested = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if requested:
        return int(requested)
    if os.environ.get("RMI_TEST_DEVICE", "cpu") != "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1))
