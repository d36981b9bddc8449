"""x64 is a process-wide JAX flag: the x64 suite is collected only in its own process."""

import os

# test_x64_process.py runs parity_tests/x64 in a subprocess with JAX_ENABLE_X64=1.
collect_ignore = [] if os.environ.get("JAX_ENABLE_X64") else ["x64"]
