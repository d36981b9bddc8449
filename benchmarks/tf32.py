"""A pytest plugin that runs every test under PyTorch's reduced float32 matmul precision.

``python -m pytest -p benchmarks.tf32 ...`` calls ``torch.set_float32_matmul_precision("high")``
before each test, the setting users make (PyTorch Lightning advises it) to let float32 matrix
products run in TF32 on recent NVIDIA GPUs (and in bfloat16 on CPUs with AMX or AVX512-BF16).
Before *each* test, so that a test which restores PyTorch's default cannot leave the next one at
full precision; a test's own fixtures still set what that test needs. The JAX counterpart is
the environment variable ``JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32``, set by the caller. The
report header shows both settings, so that the log proves which were in effect.
"""

from __future__ import annotations

import pytest

TORCH_FLOAT32_MATMUL_PRECISION = "high"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The settings this run's tests start from."""
    import jax
    import torch

    torch.set_float32_matmul_precision(TORCH_FLOAT32_MATMUL_PRECISION)
    return [
        f"benchmarks.tf32: torch float32 matmul precision "
        f"{torch.get_float32_matmul_precision()!r} before each test; JAX default matmul "
        f"precision {jax.config.jax_default_matmul_precision!r}"
    ]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Reduced precision at the start of every test, whatever the previous one left."""
    import torch

    torch.set_float32_matmul_precision(TORCH_FLOAT32_MATMUL_PRECISION)
