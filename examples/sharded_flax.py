"""Data-parallel training of the Flax demo's U-Net with ``rmi_loss``, over a mesh of all devices.

The batch is split over a one-axis ``jax.sharding.Mesh`` named ``'data'``
(``NamedSharding(mesh, P('data'))``); parameters and optimizer state are replicated
(``P()``). The train step is the Flax demo's own (``examples/train_flax.py``), jitted with those
``in_shardings``/``out_shardings``: XLA splits the work per device and inserts the reductions
(the batch mean of the loss, the gradient sums), so the step computes the same loss and
gradients as on one device, up to float32 reassociation. Nothing in ``rmi_loss`` needs to know:
it is a pure function of arrays.

Devices: on a CPU-only machine the script simulates 8 devices. It sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` itself, before importing JAX, unless
``XLA_FLAGS`` already sets a device count (the flag only takes effect if JAX has not been
imported yet in the process). On GPUs or TPUs the mesh spans ``jax.devices()`` as they are::

    python examples/sharded_flax.py                  # 100 steps, about 50 s on 2 cores
    python examples/sharded_flax.py --check          # sharded vs single-device loss and grads

``--check`` prints one JSON line comparing the sharded loss and gradients of one batch with the
single-device ones (``tests/test_sharded_flax.py`` runs it).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

SIMULATED_DEVICES = 8
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def simulate_cpu_devices(count: int = SIMULATED_DEVICES) -> None:
    """Ask XLA for ``count`` host (CPU) devices, unless ``XLA_FLAGS`` already chose a number.

    Must run before JAX is imported: XLA reads the flags once, when its CPU client starts.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _DEVICE_COUNT_FLAG.search(flags) is None:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


simulate_cpu_devices()
# Make ``examples`` importable when run as ``python examples/sharded_flax.py`` from a checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from examples.common import (  # noqa: E402
    NUM_TRAIN,
    batch_order,
    data_parallel_parser,
    gradient_differences,
    load_data,
    print_run_metrics,
    train_loop,
)
from examples.train_flax import init_state, loss_fn, make_train_step, predict  # noqa: E402


def make_mesh() -> Mesh:
    """A one-axis mesh ``'data'`` over every device, with automatic (compiler) sharding."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """``(replicated, batch)``: a copy on every device, and split along the leading axis."""
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def sharded_train_step(graphdef: nnx.GraphDef, bce_weight: float, mesh: Mesh):
    """The Flax demo's train step, jitted for data parallelism over ``mesh``.

    The state comes in and goes out replicated, the images and targets come in split over
    ``'data'``; the state is donated, so each step updates it in place.
    """
    replicated, batch = shardings(mesh)
    return jax.jit(
        make_train_step(graphdef, bce_weight),
        in_shardings=(replicated, batch, batch),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def compare_with_single_device(
    batch_size: int, seed: int, bce_weight: float = 0.5
) -> dict[str, object]:
    """Loss and parameter gradients of one batch, sharded over all devices vs on one device.

    Returns:
        A JSON-ready dict: the device count, both losses, the relative loss difference, the
        relative difference of all gradients taken together (``||a - b|| / ||b||``) and of the
        worst single parameter array, and the sharding the batch had.
    """
    mesh = make_mesh()
    replicated, batch = shardings(mesh)
    data = load_data(seed)
    x, y = data.train_x[:batch_size], data.train_t[:batch_size]
    graphdef, state = init_state(seed, steps=1)
    model, _ = nnx.merge(graphdef, state)
    model_def, params = nnx.split(model)

    def value_and_grad(params: nnx.State, x: jax.Array, y: jax.Array):
        return jax.value_and_grad(lambda p: loss_fn(nnx.merge(model_def, p), x, y, bce_weight))(
            params
        )

    # Single device: plain jit on arrays that live on device 0.
    device = jax.devices()[0]
    single_loss, single_grads = jax.jit(value_and_grad)(*jax.device_put((params, x, y), device))
    sharded_x, sharded_y = jax.device_put((x, y), batch)
    sharded_loss, sharded_grads = jax.jit(
        value_and_grad,
        in_shardings=(replicated, batch, batch),
        out_shardings=(replicated, replicated),
    )(jax.device_put(params, replicated), sharded_x, sharded_y)

    return {
        "devices": jax.device_count(),
        "batch_sharding": str(sharded_x.sharding.spec),
        "batch_devices": len(sharded_x.sharding.device_set),
        "loss_single": float(single_loss),
        "loss_sharded": float(sharded_loss),
        "loss_rel_diff": abs(float(sharded_loss) - float(single_loss)) / abs(float(single_loss)),
        **gradient_differences(jax.tree.leaves(sharded_grads), jax.tree.leaves(single_grads)),
    }


def train(steps: int, batch_size: int, seed: int, bce_weight: float) -> dict[str, object]:
    """Train the U-Net data-parallel; print and return the test-set metrics."""
    mesh = make_mesh()
    replicated, batch = shardings(mesh)
    data = load_data(seed)
    order = batch_order(NUM_TRAIN, steps, batch_size, seed)
    graphdef, state = init_state(seed, steps)
    state = jax.device_put(state, replicated)
    step = sharded_train_step(graphdef, bce_weight, mesh)

    def one_step(i: int) -> float:
        nonlocal state
        # Index on the host and send each device only its slice of the batch.
        x, y = jax.device_put((data.train_x[order[i]], data.train_t[order[i]]), batch)
        state, loss = step(state, x, y)
        return float(loss)

    train_loop(f"sharded x{jax.device_count()}", range(steps), one_step)
    model, _ = nnx.merge(graphdef, state)
    return print_run_metrics(
        f"sharded flax: {steps} steps x batch {batch_size}, seed {seed}",
        bce_weight,
        predict(model, data.test_x),
        data.test_y,
    )


def main(argv: list[str] | None = None) -> int:
    """Compare one step with a single device; unless ``--check``, then train and evaluate."""
    parser = data_parallel_parser(__doc__.split("\n\n")[0], split_over="devices")
    args = parser.parse_args(argv)
    devices = jax.device_count()
    if args.batch_size % devices:
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of {devices} devices")
    comparison = compare_with_single_device(args.batch_size, args.seed, args.bce_weight)
    if args.check:
        print(json.dumps(comparison))
        return 0
    print(
        f"{devices} devices ({jax.devices()[0].platform}), batch {args.batch_size} split "
        f"{comparison['batch_sharding']}: sharded vs single-device loss differs by "
        f"{comparison['loss_rel_diff']:.1e}, gradients by {comparison['grad_rel_diff']:.1e} "
        "(relative)"
    )
    train(args.steps, args.batch_size, args.seed, args.bce_weight)
    return 0


if __name__ == "__main__":
    sys.exit(main())
