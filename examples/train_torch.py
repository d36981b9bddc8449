"""Train a small U-Net in PyTorch on synthetic shapes, with BCE alone and with BCE + RMI.

The PyTorch twin of ``examples/train_flax.py``: the same data, batch order, architecture
(mirrored in NCHW, same initialisation scheme), adam with the same warmup-cosine schedule, the
same two runs, and the same metrics, figure and JSON. The loss is the drop-in module
``rmi_torch.RMILoss(with_logits=True, bce_weight=w)``: ``w = 1.0`` is pure BCE, ``w = 0.5``
(the reference default) half BCE, half RMI::

    python examples/train_torch.py                   # defaults: about 2 min on 2 CPU cores
    python examples/train_torch.py --steps 3 --out /tmp/smoke

Precision: the loss keeps ``RMILoss``'s default ``use_double_precision=True`` (float64
statistics, float32 model), because that is what a user switching from ``rmi-pytorch`` gets
and what the drop-in promises. The float32 route (``use_double_precision=False``, what the Flax
demo runs) is as accurate on these inputs; the statistics are a small part of a step's cost
here either way.

Outputs: ``<out>/train_torch.png`` and ``<out>/train_torch.json``.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

# Make ``examples`` importable when the script is run as ``python examples/train_torch.py``
# from a checkout: only the script's folder is on sys.path then, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# OpenMP threads that spin while waiting for each other are fast on idle cores, but when another
# process holds one of the cores every step waits for a descheduled thread: measured 10x slower
# steps on 2 shared cores. Passive waiting costs little when the cores are idle. Read once, when
# torch loads OpenMP, so it is set before the import (a value from the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from examples.common import (  # noqa: E402
    NUM_CLASSES,
    PEAK_LR,
    WIDTH,
    Data,
    run_experiment,
    train_loop,
    warmup_cosine,
)
from rmi_torch import RMILoss  # noqa: E402

# flax's lecun_normal draws from a normal truncated at 2 standard deviations and rescales it by
# this factor (the std of a unit normal truncated there) so the variance stays 1 / fan_in.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def lecun_normal_(weight: torch.Tensor, fan_in: int) -> None:
    """Fill ``weight`` in place as flax's default kernel init does (truncated, var 1/fan_in)."""
    std = math.sqrt(1.0 / fan_in) / _TRUNCATED_NORMAL_STD
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def _flax_like(layer: nn.Conv2d | nn.ConvTranspose2d) -> nn.Conv2d | nn.ConvTranspose2d:
    """Re-initialise a layer like its flax counterpart: lecun-normal kernel, zero bias.

    PyTorch's default (kaiming-uniform with a = sqrt(5), uniform bias) differs; matching the
    scheme keeps the two demos' starting points statistically alike.
    """
    kh, kw = layer.kernel_size
    lecun_normal_(layer.weight, fan_in=layer.in_channels * kh * kw)
    nn.init.zeros_(layer.bias)
    return layer


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 'same' convolution, initialised like ``nnx.Conv``."""
    return _flax_like(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with ReLU (no normalisation: keeps the two frameworks identical)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out)
        self.conv2 = conv3x3(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class UNet(nn.Module):
    """The Flax demo's U-Net in NCHW: two levels down, two up, concatenated skips, logits out."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        w = width
        self.enc1 = ConvBlock(3, w)
        self.enc2 = ConvBlock(w, 2 * w)
        self.mid = ConvBlock(2 * w, 4 * w)
        self.up2 = _flax_like(nn.ConvTranspose2d(4 * w, 2 * w, kernel_size=2, stride=2))
        self.dec2 = ConvBlock(4 * w, 2 * w)
        self.up1 = _flax_like(nn.ConvTranspose2d(2 * w, w, kernel_size=2, stride=2))
        self.dec1 = ConvBlock(2 * w, w)
        self.head = _flax_like(nn.Conv2d(w, num_classes, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(nn.functional.max_pool2d(s1, 2))
        h = self.mid(nn.functional.max_pool2d(s2, 2))
        h = self.dec2(torch.cat([self.up2(h), s2], dim=1))
        h = self.dec1(torch.cat([self.up1(h), s1], dim=1))
        return self.head(h)


def to_nchw(array: np.ndarray) -> torch.Tensor:
    """NHWC NumPy -> contiguous NCHW tensor (the synthetic data is generated NHWC)."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def make_model(seed: int) -> UNet:
    """A fresh U-Net; the same ``seed`` gives the same weights, so every run starts alike."""
    torch.manual_seed(seed)
    return UNet(NUM_CLASSES, WIDTH)


def make_optimizer(
    model: nn.Module, steps: int
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """adam (optax's defaults are torch's) and the demos' shared warmup-cosine schedule."""
    optimizer = torch.optim.Adam(model.parameters(), lr=PEAK_LR)
    # LambdaLR scales the base rate: lr(step) = PEAK_LR * factor(step), from step 0 as in optax.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, steps) / PEAK_LR
    )
    return optimizer, scheduler


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Argmax label maps ``[N, H, W]`` for NHWC ``images`` ``[N, H, W, 3]``."""
    model.eval()
    x = to_nchw(images)
    out = [model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def train(
    name: str,
    bce_weight: float,
    data: Data,
    order: np.ndarray,
    seed: int,
    *,
    step_times: list[float] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Train one run from scratch; return its test-set label maps and its loss per step.

    ``step_times``, if given, receives each step's wall time in seconds (the study's timings).
    """
    steps = order.shape[0]
    model = make_model(seed)
    optimizer, scheduler = make_optimizer(model, steps)
    criterion = RMILoss(with_logits=True, bce_weight=bce_weight)
    x_all, y_all = to_nchw(data.train_x), to_nchw(data.train_t)
    model.train()

    def one_step(i: int) -> float:
        idx = torch.from_numpy(order[i])
        loss = criterion(model(x_all[idx]), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss.item()

    losses = train_loop(f"torch {name:<8}", range(steps), one_step, step_times=step_times)
    return predict(model, data.test_x), losses


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Both runs, the metrics table, ``<out>/train_torch.png`` and ``<out>/train_torch.json``."""
    return run_experiment(
        "torch",
        "PyTorch U-Net",
        train,
        argv,
        description=__doc__.split("\n\n")[0],
        extra={"loss": "rmi_torch.RMILoss(with_logits=True, use_double_precision=True)"},
    )


if __name__ == "__main__":
    main()
