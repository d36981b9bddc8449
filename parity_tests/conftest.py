"""The float64 JAX suite (``x64/``) switches x64 on per test (``x64/conftest.py``)."""
