"""Region statistics and the log-determinant of the posterior covariance.

With ``Z = [P; Y]`` the centred region vectors of prediction and target (``2d x L``), the joint
matrix ``J = Z Z^T + eps I`` has the posterior covariance plus ``eps I`` (``M + eps I``, see
``docs/semantics.md``) as the Schur complement of its leading ``d x d`` block, so the trailing
``d`` diagonal entries of the Cholesky factor of ``J`` are those of the Cholesky factor of
``M + eps I``.

The factor ``R`` (``R^T R = J``) comes from a shifted Cholesky QR in two passes of the data
``A = [Z^T; sqrt(eps) I]``, never from ``J`` alone: ``J`` is squared data, and in float32 it rounds
away the ``eps``-sized information the loss is made of. Pass one factors ``J + shift I`` with a
shift of a few rounding units of ``trace(J)`` (``rmi_core.options.shift_units``), so it cannot
fail; pass two factors the Gram matrix of the well-conditioned ``A R1^-1``, recomputed from the
data; ``R = R2 R1``. The same algorithm as ``rmi_jax._statistics``, so both backends round
alike. Every product runs in true float32 (or float64) whatever the caller's
``torch.set_float32_matmul_precision`` or TF32 switches say (:func:`full_precision_matmuls`).

On the CPU the maps are taken a few at a time, building their region vectors inside the chunk,
so the ``2d``-fold copy of the maps is never held whole (fresh memory that size costs more to
touch than the products on it); the backward pass rebuilds them the same way. Accelerators take
all maps at once, up to a memory budget (``rmi_core.options.CHUNK_BYTES``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch.autograd.function import once_differentiable

from rmi_core import options
from rmi_core.options import maps_per_chunk, shift_units, window_grid
from rmi_torch._windows import fold_windows, region_vectors

# The float32 matmul settings that the statistics override, as (object, attribute) pairs: the
# per-backend switches of PyTorch >= 2.9 (which `set_float32_matmul_precision` and `allow_tf32`
# write too), else the legacy cuBLAS switch. cuDNN runs no product of the statistics.
if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
    _MATMUL_SWITCHES = (
        (torch.backends.cuda.matmul, "fp32_precision", "ieee"),
        (torch.backends.mkldnn.matmul, "fp32_precision", "ieee"),
    )
else:  # pragma: no cover - PyTorch < 2.9
    _MATMUL_SWITCHES = ((torch.backends.cuda.matmul, "allow_tf32", False),)
_LEGACY = len(_MATMUL_SWITCHES) == 1

# The switches are process-wide: they are set to full precision while any statistics run and
# restored when the last one ends. The count and the lock make concurrent calls from several
# threads safe (the first saves the caller's settings, the last restores them).
_precision_lock = threading.Lock()
_precision_users = 0
_saved_switches: list = []
_saved_precision: list[str] = []


@contextlib.contextmanager
def full_precision_matmuls() -> Iterator[None]:
    """Run the enclosed matrix products in true float32, whatever the global settings.

    ``torch.set_float32_matmul_precision("high"/"medium")`` lets float32 products run in TF32
    (NVIDIA GPUs) or bfloat16 (CPUs with AMX/AVX512-BF16), and ``allow_tf32`` does the same for
    cuBLAS; either rounds away the ``eps``-sized signal of the statistics. The caller's settings
    come back exactly on exit, also when the enclosed code raises. Other threads' products run at
    full precision too while the statistics run.
    """
    global _precision_users
    with _precision_lock:
        if _precision_users == 0:
            _saved_switches[:] = [getattr(owner, name) for owner, name, _ in _MATMUL_SWITCHES]
            _saved_precision[:] = [torch.get_float32_matmul_precision()] if _LEGACY else []
            for owner, name, full in _MATMUL_SWITCHES:
                setattr(owner, name, full)
            if _LEGACY:  # pragma: no cover - PyTorch < 2.9
                torch.set_float32_matmul_precision("highest")
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0:
                for (owner, name, _), saved in zip(_MATMUL_SWITCHES, _saved_switches, strict=True):
                    setattr(owner, name, saved)
                for precision in _saved_precision:  # pragma: no cover - PyTorch < 2.9
                    torch.set_float32_matmul_precision(precision)


def _centre_(z: torch.Tensor, window_weights: torch.Tensor | None) -> torch.Tensor:
    """Subtract, in place, from each region-vector component its mean over the windows.

    With ``window_weights`` (``[..., L]``, 0 or 1), windows of weight 0 leave the mean and
    become zero columns, so they leave every covariance too.
    """
    if window_weights is None:
        return z.sub_(z.mean(dim=-1, keepdim=True))
    weights = window_weights.unsqueeze(-2)
    mean = (z * weights).sum(dim=-1, keepdim=True) / weights.sum(dim=-1, keepdim=True)
    return z.sub_(mean).mul_(weights)


def _upper_cholesky(gram: torch.Tensor) -> torch.Tensor:
    # cholesky_ex does not raise: a matrix it cannot factor (NaN input) gives NaN entries, so
    # NaN in the inputs comes out as a NaN loss, as in rmi_jax, not as a LinAlgError.
    factor, _ = torch.linalg.cholesky_ex(gram, upper=True)
    return factor


def _triangular_inverse(r: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device).expand_as(r)
    return torch.linalg.solve_triangular(r, eye, upper=True)


def _joint_factor(z: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper-triangular R with R^T R = z z^T + epsilon I, and R^-1; z is ``[.., k, L]``."""
    k, windows = z.shape[-2:]
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    gram = z @ z.mT
    trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)[..., None, None]
    shift = shift_units(k, windows) * torch.finfo(z.dtype).eps * trace
    r1 = _upper_cholesky(gram + (epsilon + shift) * eye)
    r1_inv = _triangular_inverse(r1)
    # Rows of A R1^-1, transposed: the data part R1^-T Z and the ridge part sqrt(eps) R1^-T.
    transformed = r1_inv.mT @ z
    r2 = _upper_cholesky(transformed @ transformed.mT + epsilon * (r1_inv.mT @ r1_inv))
    return r2 @ r1, r1_inv @ _triangular_inverse(r2)


def _trailing_log_diagonal(r: torch.Tensor, offset: float) -> torch.Tensor:
    k = r.shape[-1]
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1)[..., k // 2 :].abs()
    return torch.log(diagonal + offset).sum(dim=-1)


def _gradient_weights(r: torch.Tensor, r_inv: torch.Tensor, offset: float) -> torch.Tensor:
    """``W`` with ``d f / d Z = 2 W Z`` for ``f = sum_trailing log(diag(R) + offset)``.

    ``df = tr(L^-T D L^-1 dJ)`` for ``L = R^T``, ``D = diag(L_kk f'(L_kk) / 2)`` on the trailing
    block, and ``dJ = dZ Z^T + Z dZ^T``: so ``W = R^-1 D R^-T``, a small ``k x k`` matrix.
    """
    k = r.shape[-1]
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1).abs()
    trailing = torch.arange(k, device=r.device) >= k // 2
    weight = torch.where(trailing, 0.5 * diagonal / (diagonal + offset), 0.0)
    return (r_inv * weight[..., None, :]) @ r_inv.mT


def _joint_vectors(p_maps, y_maps, window_weights, radius: int, step: int, dtype) -> torch.Tensor:
    """Centred ``[P; Y]`` region vectors ``[M, 2d, L]`` of ``[M, H, W]`` maps, in ``dtype``,
    built straight into one buffer; ``window_weights``: ``None`` or ``[M, L]``."""
    p_windows = region_vectors(p_maps.unsqueeze(1), radius, step)[:, 0]
    z = torch.empty((p_maps.shape[0], 2, *p_windows.shape[1:]), dtype=dtype, device=p_maps.device)
    z[:, 0].copy_(p_windows)
    z[:, 1].copy_(region_vectors(y_maps.unsqueeze(1), radius, step)[:, 0])
    return _centre_(z.view(p_maps.shape[0], 2 * radius * radius, -1), window_weights)


def _chunks(maps: torch.Tensor, radius: int, step: int, dtype) -> list[slice]:
    """Slices of the ``M`` maps of ``[M, H, W]`` ``maps``: cache-sized on the CPU, as large as
    the accelerator budget allows elsewhere."""
    count = maps.shape[0]
    rows, cols = window_grid(*maps.shape[-2:], radius, step)
    itemsize = torch.finfo(dtype).bits // 8
    budget = options.CHUNK_BYTES["cpu" if maps.device.type == "cpu" else "accelerator"]
    size = maps_per_chunk(count, rows * cols, radius, itemsize, budget)
    return [slice(start, start + size) for start in range(0, count, size)]


def _vectors_by_chunk(p_maps, y_maps, window_weights, radius: int, step: int, dtype):
    """``(chunk, region vectors of its maps)`` for each chunk of :func:`_chunks`."""
    for chunk in _chunks(p_maps, radius, step, dtype):
        weights = None if window_weights is None else window_weights[chunk]
        yield chunk, _joint_vectors(p_maps[chunk], y_maps[chunk], weights, radius, step, dtype)


class _RegionLogDet(torch.autograd.Function):
    """The log-determinant of each map pair's regions, with the closed-form backward.

    Works on the ``[M, H, W]`` maps of :func:`region_log_det`, a chunk at a time. The centring
    needs no backward of its own: the gradient ``2 W Z`` with respect to the centred ``Z`` has
    zero (weighted) mean over the windows, because ``Z`` has, so it is also the gradient with
    respect to the raw vectors. The backward forms only the rows of ``2 W Z`` whose maps need a
    gradient (the target's usually do not) and folds them back.
    """

    @staticmethod
    def forward(ctx, p_maps, y_maps, window_weights, radius, step, epsilon, offset, dtype):
        values, weights = [], []
        chunks = _vectors_by_chunk(p_maps, y_maps, window_weights, radius, step, dtype)
        with full_precision_matmuls():
            for _, z in chunks:
                r, r_inv = _joint_factor(z, epsilon)
                values.append(_trailing_log_diagonal(r, offset))
                weights.append(_gradient_weights(r, r_inv, offset))
        ctx.save_for_backward(p_maps, y_maps, window_weights, torch.cat(weights))
        ctx.options = (radius, step, dtype)
        return torch.cat(values)

    @staticmethod
    @once_differentiable
    def backward(ctx, cotangent: torch.Tensor):
        p_maps, y_maps, window_weights, weights = ctx.saved_tensors
        radius, step, dtype = ctx.options
        d = radius * radius
        grads = [
            torch.empty_like(p_maps, dtype=dtype) if ctx.needs_input_grad[i] else None
            for i in (0, 1)
        ]
        chunks = _vectors_by_chunk(p_maps, y_maps, window_weights, radius, step, dtype)
        with full_precision_matmuls():
            for chunk, z in chunks:
                # The cotangent scales the small k x k matrix, not the 2d x L result.
                scaled = 2.0 * cotangent[chunk, None, None] * weights[chunk]
                for i, grad in enumerate(grads):
                    if grad is not None:
                        vectors = (scaled[:, i * d : (i + 1) * d] @ z).unsqueeze(1)
                        folded = fold_windows(vectors, p_maps.shape[-2:], radius, step)
                        grad[chunk] = folded[:, 0]
        return (*grads, None, None, None, None, None, None)


def region_log_det(p_maps, y_maps, window_weights, radius, step, epsilon, offset, dtype):
    """``sum(log(diag(chol(M + eps I)) + offset))`` for each ``(n, c)`` of two maps, ``[N, C]``.

    ``p_maps``, ``y_maps``: ``[N, C, H, W]`` (downsampled) probability and target maps, whose
    ``radius x radius`` windows at spacing ``step`` are the region vectors, taken in ``dtype``.
    ``window_weights``: ``None``, or ``[N, L]`` 0/1 weights of those windows, shared by the
    classes (0 drops a window from the statistics). With ``offset = 0`` this is
    ``logdet(M + eps I) / 2``; the reference's "log trace" route uses ``offset = 1e-8``.
    """
    n, c = p_maps.shape[:2]
    if window_weights is not None:
        window_weights = window_weights.repeat_interleave(c, dim=0)  # one row per (n, c)
    flat = [maps.reshape(n * c, *maps.shape[2:]) for maps in (p_maps, y_maps)]
    log_det = _RegionLogDet.apply(*flat, window_weights, radius, step, epsilon, offset, dtype)
    return log_det.view(n, c)


def lower_bound(
    p_maps: torch.Tensor,
    y_maps: torch.Tensor,
    window_weights: torch.Tensor | None,
    *,
    radius: int,
    step: int,
    epsilon: float,
    offset: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``0.5 logdet(M + eps I) / d`` per example and class of downsampled ``[N, C, H, W]`` maps,
    ``[N, C]``, with the statistics in ``dtype``.

    ``window_weights``: ``None`` or ``[N, L]`` 0/1 weights of the windows, shared by the classes.
    Autocast is switched off here: it would run the matrix products in bfloat16 or float16,
    which cannot carry the ``eps``-sized signal; the statistics stay in ``dtype``.
    """
    with torch.autocast(p_maps.device.type, enabled=False):
        # 0.5 * logdet = sum(log(diag(chol))), so the 0.5 and the 2 of the reference cancel.
        log_det = region_log_det(
            p_maps, y_maps, window_weights, radius, step, epsilon, offset, dtype
        )
    return log_det / (radius * radius)
