"""Speed and memory benchmarks of the RMI loss backends (not part of the published packages).

The modules, one concern each:

- ``rows``: the rows (what each one runs), the inputs and one row ready to call on a shape;
- ``measure``: timing and peak memory of one prepared row, and the methods behind them;
- ``workers``: one measurement per fresh subprocess, and how the parent gathers them;
- ``machine``: what the figures come from (CPU model and SIMD flags, devices, versions);
- ``report``: the ratios between rows and the printed tables;
- ``targets``: the issues' speed and memory targets, judged on one run's results;
- ``bench``: the command line, ``python -m benchmarks.bench``;
- ``cost_bound``: where rmi_jax's time goes and what its statistics can cost at least;
- ``float32_accuracy``: the float32 routes' error against the float64 reference;
- ``tf32``: reduced-precision matmul settings for a pytest run (``-p benchmarks.tf32``);
- ``gpu_check.sh``: the prepared GPU check (tests on the GPU, TF32 accuracy, the benchmark).
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
