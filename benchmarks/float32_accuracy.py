"""float32 accuracy of both backends against the float64 NumPy reference
(docs/semantics.md#float32-facts).

``python -m benchmarks.float32_accuracy`` prints, for a 2x3x256x256 binary target, predictions
``0.98 * target + 0.01`` ("near-perfect"), exactly ``target`` ("exact") and uniform noise
("random"), at strides 3 and 1, with ``bce_weight=0`` (the RMI term alone), the relative error of
each backend's float32 route. The literal float32 algorithm (``parity_tests.baseline_torch``, the
stand-in for the existing implementations) is shown beside it.

``--device cuda`` puts the torch tensors on the GPU (JAX uses its default device), and
``--torch-matmul-precision high`` computes under ``torch.set_float32_matmul_precision("high")``
(TF32 products on recent NVIDIA GPUs); ``JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32`` does the
same for JAX.
"""

from __future__ import annotations

import argparse

import numpy as np

from parity_tests import reference

CASES = ("near-perfect", "exact", "random")
STRIDES = (3, 1)


def make_case(name: str, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = (rng.random(shape) < 0.5).astype(np.float32)
    pred = {
        "near-perfect": 0.98 * target + 0.01,
        "exact": target.copy(),
        "random": rng.uniform(0.02, 0.98, shape),
    }[name]
    return pred.astype(np.float32), target


def float32_errors(
    name: str, stride: int, shape: tuple[int, ...], device: str = "cpu"
) -> dict[str, float]:
    """Relative error of each float32 route on one case (NaN where a route fails); the torch
    routes run on ``device``."""
    import jax.numpy as jnp
    import torch

    from parity_tests.baseline_torch import baseline_rmi_loss
    from rmi_jax import rmi_loss as jax_loss
    from rmi_torch import rmi_loss as torch_loss

    pred, target = make_case(name, shape)
    pred_t, target_t = (torch.tensor(a, device=device) for a in (pred, target))
    options = {"with_logits": False, "bce_weight": 0.0, "stride": stride}
    exact = reference.dense_rmi_loss(pred.astype(np.float64), target.astype(np.float64), **options)
    values = {
        "rmi_jax": float(
            jax_loss(jnp.asarray(pred), jnp.asarray(target), channel_axis=1, **options)
        ),
        "rmi_torch": float(torch_loss(pred_t, target_t, use_double_precision=False, **options)),
    }
    # The literal algorithm takes logits; the float32 logit of these probabilities is exact enough
    # for its sigmoid to give them back, but its Cholesky may fail, which is the point.
    logits = torch.logit(pred_t.clamp(1e-7, 1 - 1e-7))
    try:
        values["literal-f32"] = float(
            baseline_rmi_loss(logits, target_t, double=False, bce_weight=0.0, stride=stride)
        )
    except torch.linalg.LinAlgError:
        values["literal-f32"] = float("nan")
    return {k: abs(v - exact) / abs(exact) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="torch device (JAX uses its default)")
    parser.add_argument(
        "--torch-matmul-precision",
        choices=("highest", "high", "medium"),
        default="highest",
        help="torch.set_float32_matmul_precision for the run",
    )
    args = parser.parse_args()
    shape = (2, 3, args.size, args.size)

    import jax
    import torch

    torch.set_float32_matmul_precision(args.torch_matmul_precision)
    print(f"relative error of the float32 routes vs the float64 reference, {shape}, bce_weight=0")
    print(
        f"torch on {args.device}, float32 matmul precision {args.torch_matmul_precision!r}; "
        f"JAX on {jax.devices()[0]}, default matmul precision "
        f"{jax.config.jax_default_matmul_precision!r}"
    )
    header = ("prediction", "stride", "rmi_jax", "rmi_torch", "literal-f32")
    print("{:14s} {:>6s} {:>10s} {:>10s} {:>12s}".format(*header))
    for name in CASES:
        for stride in STRIDES:
            e = float32_errors(name, stride, shape, args.device)
            print(
                f"{name:14s} {stride:6d} {e['rmi_jax']:10.1e} {e['rmi_torch']:10.1e} "
                f"{e['literal-f32']:12.1e}"
            )


if __name__ == "__main__":
    main()
