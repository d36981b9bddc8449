"""What rmi_jax lowers to on the platforms users train on, checked on the CPU with ``jax.export``.

``jax.export`` lowers for ``cuda`` and ``tpu`` without such a device, so the structure of the
module each platform would run can be read here: the precision of every matrix product, the loops
over chunks of the statistics, the dtype of the statistics under ``use_double_precision`` on TPU,
and a batch size left symbolic.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import rmi_jax
from parity_tests.tolerances import F32_SAME_MATH_ATOL, F32_SAME_MATH_RTOL, relative_error
from rmi_core import numerics

# The benchmark sizes of the platform issue: 8 examples, 21 classes, 256 and 512 pixels square.
BENCHMARK_SHAPES = [(8, 256, 256, 21), (8, 512, 512, 21)]
FULL_PRECISION = ("HIGHEST", "F32_F32_F32", "F64_F64_F64")


def lowered(loss, shapes, platform: str, dtype=jnp.float32) -> str:
    """The StableHLO text of ``jit(value_and_grad(loss))`` exported for ``platform``."""
    specs = [jax.ShapeDtypeStruct(shape, dtype) for shape in shapes]
    function = jax.jit(jax.value_and_grad(loss))
    return export.export(function, platforms=(platform,))(*specs).mlir_module()


def dense_loss(**options):
    return lambda pred, target: rmi_jax.rmi_loss(pred, target, with_logits=True, **options)


def dot_generals(module: str) -> list[str]:
    return re.findall(r"stablehlo\.dot_general[^\n]*", module)


def loops(module: str) -> int:
    return module.count("stablehlo.while")


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("global_precision", [None, "bfloat16", "tensorfloat32"])
def test_every_product_runs_at_full_precision(platform, global_precision) -> None:
    shape = BENCHMARK_SHAPES[0]
    if global_precision is None:
        module = lowered(dense_loss(), [shape, shape], platform)
    else:
        # A user's global default must not reach the statistics' products.
        with jax.default_matmul_precision(global_precision):
            module = lowered(dense_loss(), [shape, shape], platform)
    dots = dot_generals(module)
    assert dots, "the statistics should lower to dot_general products"
    reduced = [dot for dot in dots if not any(p in dot for p in FULL_PRECISION)]
    assert not reduced, reduced


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_label_loss_products_run_at_full_precision(platform) -> None:
    def loss(logits, labels):
        return rmi_jax.rmi_loss_from_labels(logits, labels, num_classes=21, rmi_pool_way=2)

    specs = [
        jax.ShapeDtypeStruct((2, 64, 64, 21), jnp.float32),
        jax.ShapeDtypeStruct((2, 64, 64), jnp.int32),
    ]
    function = jax.jit(jax.value_and_grad(loss))
    dots = dot_generals(export.export(function, platforms=(platform,))(*specs).mlir_module())
    assert dots and all(any(p in dot for p in FULL_PRECISION) for dot in dots)


@pytest.mark.parametrize("shape", BENCHMARK_SHAPES, ids=["256", "512"])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_take_all_maps_in_one_batch(platform, shape) -> None:
    assert loops(lowered(dense_loss(), [shape, shape], platform)) == 0


# Region extraction: strided windows, the route that builds region vectors.
STRIDED = {"downsampling_method": "region-extraction"}


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
@pytest.mark.parametrize("loss_options", [{}, STRIDED], ids=["lags", "strided"])
def test_accelerators_never_loop_and_lag_products_nowhere(platform, loss_options) -> None:
    # The lag products need no chunks on any platform; the region vectors of strided windows
    # come in cache-sized chunks on the CPU only (one loop forward, one backward).
    shape = BENCHMARK_SHAPES[0]
    expected = 2 if platform == "cpu" and loss_options else 0
    assert loops(lowered(dense_loss(**loss_options), [shape, shape], platform)) == expected


# The volume row of the benchmarks (channels last), and its anisotropic and label-map forms.
VOLUME_SHAPE = (2, 64, 96, 96, 4)
VOLUME_LOSSES = {
    "cubic": dense_loss(),
    "anisotropic-strided": dense_loss(radius=(1, 3, 3), stride=(1, 2, 2), **STRIDED),
    "labels-trilinear": lambda logits, target: rmi_jax.rmi_loss_from_labels(
        logits, jnp.argmax(target, -1), num_classes=4, rmi_pool_way=2
    ),
}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("name", list(VOLUME_LOSSES))
def test_volumes_run_at_full_precision_in_one_batch(platform, name) -> None:
    # 3x3x3 regions make 54x54 joint matrices: every product at full precision, no chunk loop.
    module = lowered(VOLUME_LOSSES[name], [VOLUME_SHAPE, VOLUME_SHAPE], platform)
    dots = dot_generals(module)
    assert dots and all(any(p in dot for p in FULL_PRECISION) for dot in dots), dots
    assert loops(module) == 0


def test_one_export_serves_each_platform_its_own_way() -> None:
    shape = BENCHMARK_SHAPES[0]
    specs = [jax.ShapeDtypeStruct(shape, jnp.float32)] * 2
    function = jax.jit(jax.value_and_grad(dense_loss(**STRIDED)))
    exported = export.export(function, platforms=("cpu", "cuda"))(*specs)
    assert exported.platforms == ("cpu", "cuda")
    # Both branches are in the one module; the platform picks its branch when it runs.
    assert loops(exported.mlir_module()) == 2


def test_accelerator_branch_forced_on_cpu_matches_the_cpu_branch(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    pred = jnp.asarray(rng.standard_normal((2, 24, 24, 3)), jnp.float32)
    target = jnp.asarray(rng.random((2, 24, 24, 3)) < 0.4, jnp.float32)
    loss = dense_loss(**STRIDED)

    # The CPU branch with chunks of one map, then the accelerator branch (one batch) run on CPU.
    bytes_per_map = 2 * 9 * 22 * 22 * 4
    monkeypatch.setitem(numerics.CHUNK_BYTES, "cpu", bytes_per_map)
    chunked = jax.value_and_grad(loss)(pred, target)
    monkeypatch.setitem(numerics.CHUNK_BYTES, "cpu", numerics.CHUNK_BYTES["accelerator"])
    batched = jax.value_and_grad(loss)(pred, target)
    np.testing.assert_allclose(
        batched[0], chunked[0], rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
    )
    assert relative_error(batched[1], chunked[1]) < F32_SAME_MATH_RTOL


def test_double_precision_on_tpu_falls_back_to_float32_statistics() -> None:
    with jax.enable_x64(True):
        shape = (2, 24, 24, 3)
        double = dense_loss(use_double_precision=True)
        tpu = lowered(double, [shape, shape], "tpu")
        gpu = lowered(double, [shape, shape], "cuda")
    # No float64 product or factorisation on TPU; on other platforms the statistics are float64.
    assert not re.search(r"dot_general[^\n]*-> tensor<[^>]*f64>", tpu)
    assert not re.search(r"cholesky[^\n]*f64", tpu)
    assert re.search(r"dot_general[^\n]*-> tensor<[^>]*f64>", gpu)


@pytest.mark.parametrize("platform", ["cpu", "cuda"])
def test_export_with_a_symbolic_batch(platform) -> None:
    (batch,) = export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, 24, 24, 3), jnp.float32)
    function = jax.jit(jax.value_and_grad(dense_loss()))
    exported = export.export(function, platforms=(platform,))(spec, spec)
    if platform != "cpu":
        return
    rng = np.random.default_rng(5)
    for size in (1, 3):
        pred = jnp.asarray(rng.standard_normal((size, 24, 24, 3)), jnp.float32)
        target = jnp.asarray(rng.random((size, 24, 24, 3)) < 0.5, jnp.float32)
        value, grad = exported.call(pred, target)
        expected_value, expected_grad = function(pred, target)
        np.testing.assert_allclose(
            value, expected_value, rtol=F32_SAME_MATH_RTOL, atol=F32_SAME_MATH_ATOL
        )
        assert relative_error(grad, expected_grad) < F32_SAME_MATH_RTOL
