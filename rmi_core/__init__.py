"""What the two backends share and that needs no array library, one concern per module:

- :mod:`rmi_core.options`: option types, values and their checks, with the messages users see;
- :mod:`rmi_core.geometry`: the size arithmetic of pooling, resizing and windows, for any number
  of spatial axes (images and volumes), each option one int per axis;
- :mod:`rmi_core.shapes`: the checks of array ranks, layouts and shapes;
- :mod:`rmi_core.numerics`: the statistics' numerics (shift, smallest epsilon, chunk sizes,
  which maps take lag products);
- :mod:`rmi_core.terms`: the loss's two terms and their reduction;
- :mod:`rmi_core.labels`: the label-map term, from the backend's own windows and statistics.

This package also holds the release version and the check that a backend's framework is
installed. Importing it pulls in neither JAX nor PyTorch."""

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
