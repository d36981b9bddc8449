"""Data-parallel training of the PyTorch demo's U-Net with ``RMILoss``: DDP over CPU processes.

``torch.multiprocessing.spawn`` starts 2 processes (``--world-size``) that join a ``gloo``
process group on ``127.0.0.1`` (a free port); each wraps the same seeded U-Net in
``DistributedDataParallel`` and trains on its equal, contiguous share of every global batch.
DDP averages the gradients over the processes in ``backward``. ``RMILoss`` (``reduction="mean"``)
is a mean over the batch, so with equal shares that average *is* the full-batch gradient: the
processes take the same optimizer steps as one process on the whole batch, up to float32
reassociation. Nothing in ``RMILoss`` needs to know it runs distributed::

    python examples/ddp_torch.py                     # 100 steps, about 20 s on 2 cores
    python examples/ddp_torch.py --check             # DDP vs single-process loss and grads

``--check`` prints one JSON line comparing the loss and parameter gradients of one global batch
under DDP with those of a single process on the full batch (``tests/test_ddp_torch.py`` runs
it). Every process builds the same seeded synthetic dataset, as a ``DistributedSampler``
user's processes would each open the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

# Make ``examples`` importable when run as ``python examples/ddp_torch.py`` from a checkout (the
# spawned processes re-import this file, so they get the same path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from examples.common import (  # noqa: E402
    NUM_TRAIN,
    batch_order,
    data_parallel_parser,
    gradient_differences,
    load_data,
    print_run_metrics,
    train_loop,
)
from examples.train_torch import make_model, make_optimizer, predict, to_nchw  # noqa: E402
from rmi_torch import RMILoss  # noqa: E402

WORLD_SIZE = 2


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_process(rank: int, world_size: int, port: int) -> None:
    """Join the ``gloo`` process group of ``world_size`` local processes as ``rank``."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    # One intra-op thread per process: the processes already share out the cores, and more
    # threads than cores would make them wait for each other at every all-reduce.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous, equal share of a global batch of example indices."""
    if len(indices) % world_size:
        raise ValueError(f"batch of {len(indices)} does not split into {world_size} equal shares")
    return np.split(indices, world_size)[rank]


def global_mean(value: torch.Tensor) -> float:
    """The mean of a scalar over the processes: the full-batch loss when shares are equal."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def gradients(model: nn.Module) -> list[np.ndarray]:
    """Copies of the parameter gradients, in ``parameters()`` order."""
    return [p.grad.detach().numpy().copy() for p in model.parameters()]


def check_worker(
    rank: int, world_size: int, port: int, batch_size: int, seed: int, bce_weight: float, out: str
) -> None:
    """Loss and averaged gradients of one global batch under DDP; rank 0 saves them to ``out``."""
    init_process(rank, world_size, port)
    try:
        data = load_data(seed)
        idx = shard(np.arange(batch_size), rank, world_size)
        model = DistributedDataParallel(make_model(seed))
        loss = RMILoss(with_logits=True, bce_weight=bce_weight)(
            model(to_nchw(data.train_x[idx])), to_nchw(data.train_t[idx])
        )
        loss.backward()
        mean_loss = global_mean(loss)
        if rank == 0:
            np.savez(out, *gradients(model.module), loss=np.float64(mean_loss))
        # Leave together: a rank that tears the group down while another still talks to it
        # (rank 0 hosts the rendezvous store) can abort that one at exit (seen 1 run in 4).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def single_process(batch_size: int, seed: int, bce_weight: float) -> tuple[float, list[np.ndarray]]:
    """Loss and gradients of the same global batch in this process, without DDP."""
    data = load_data(seed)
    model = make_model(seed)
    loss = RMILoss(with_logits=True, bce_weight=bce_weight)(
        model(to_nchw(data.train_x[:batch_size])), to_nchw(data.train_t[:batch_size])
    )
    loss.backward()
    return loss.item(), gradients(model)


def compare_with_single_process(
    world_size: int, batch_size: int, seed: int, bce_weight: float
) -> dict[str, object]:
    """Run :func:`check_worker` on ``world_size`` processes and compare with one process.

    Returns:
        A JSON-ready dict: the process count, both losses, their relative difference, and the
        gradient differences of :func:`examples.common.gradient_differences`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ddp.npz")
        mp.spawn(
            check_worker,
            args=(world_size, free_port(), batch_size, seed, bce_weight, out),
            nprocs=world_size,
            join=True,
        )
        with np.load(out) as saved:
            ddp_loss = float(saved["loss"])
            ddp_grads = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
    loss, grads = single_process(batch_size, seed, bce_weight)
    return {
        "processes": world_size,
        "loss_single": loss,
        "loss_ddp": ddp_loss,
        "loss_rel_diff": abs(ddp_loss - loss) / abs(loss),
        **gradient_differences(ddp_grads, grads),
    }


def train_worker(rank: int, world_size: int, port: int, args: argparse.Namespace) -> None:
    """Train with DDP on this rank's shares; rank 0 shows progress and prints the test metrics."""
    init_process(rank, world_size, port)
    try:
        data = load_data(args.seed)
        order = batch_order(NUM_TRAIN, args.steps, args.batch_size, args.seed)
        model = DistributedDataParallel(make_model(args.seed))
        optimizer, scheduler = make_optimizer(model, args.steps)
        criterion = RMILoss(with_logits=True, bce_weight=args.bce_weight)
        x_all, y_all = to_nchw(data.train_x), to_nchw(data.train_t)
        model.train()

        def one_step(i: int) -> float:
            idx = torch.from_numpy(shard(order[i], rank, world_size))
            loss = criterion(model(x_all[idx]), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces (averages) the gradients here
            optimizer.step()
            scheduler.step()
            return global_mean(loss)

        train_loop(f"ddp x{world_size}", range(args.steps), one_step, show=rank == 0)
        if rank == 0:
            print_run_metrics(
                f"ddp torch x{world_size}: {args.steps} steps x batch {args.batch_size}, "
                f"seed {args.seed}",
                args.bce_weight,
                predict(model.module, data.test_x),
                data.test_y,
            )
        dist.barrier()  # leave together, as in check_worker
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``--check``: print the comparison as JSON; otherwise train and print the metrics."""
    parser = data_parallel_parser(__doc__.split("\n\n")[0], split_over="processes")
    parser.add_argument("--world-size", type=int, default=WORLD_SIZE, help="processes")
    args = parser.parse_args(argv)
    if args.batch_size % args.world_size:
        raise SystemExit(
            f"--batch-size {args.batch_size} is not a multiple of {args.world_size} processes"
        )
    if args.check:
        comparison = compare_with_single_process(
            args.world_size, args.batch_size, args.seed, args.bce_weight
        )
        print(json.dumps(comparison))
        return 0
    mp.spawn(
        train_worker, args=(args.world_size, free_port(), args), nprocs=args.world_size, join=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
