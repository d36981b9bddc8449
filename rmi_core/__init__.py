"""What the two backends share and that needs no array library: the release version, the check
that a backend's framework is installed, and (in :mod:`rmi_core.options`) option types, defaults,
checks with their messages and size arithmetic. Importing it pulls in neither JAX nor PyTorch."""

import importlib

# The one version of the distribution: pyproject.toml reads it, rmi_jax and rmi_torch re-export it.
__version__ = "0.1.0"


def require_framework(module: str, framework: str, extra: str) -> None:
    """Import ``module``, or raise an ``ImportError`` that names ``framework`` and the extra that
    installs it (``pip install "rmi-loss[extra]"``), with the original error chained."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"rmi_{extra} needs {framework}, which could not be imported ({error}). Install it "
            f'with the "{extra}" extra: pip install "rmi-loss[{extra}]"'
        ) from error
