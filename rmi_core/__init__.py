"""What the two backends share and that needs no array library: the release version, and (in
:mod:`rmi_core.options`) option types, defaults, checks with their messages and size
arithmetic. Importing it pulls in neither JAX nor PyTorch."""

__version__ = "0.1.0"
