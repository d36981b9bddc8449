"""The ratios between rows, the comparison with an earlier run, and the printed tables."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.rows import REF_F32, REF_F64, REF_FLOOR


def add_comparisons(results: list[dict[str, Any]]) -> None:
    """Speed-ups vs the baselines and the ratio to the floor, per shape, in place."""
    by_shape: dict[tuple[int, ...], dict[str, dict[str, Any]]] = {}
    for res in results:
        by_shape.setdefault(tuple(res["shape"]), {})[res["row"]] = res
    for rows in by_shape.values():
        for res in rows.values():
            for mode in ("fwd", "fwdbwd"):
                t = res.get(f"{mode}_ms")
                if not isinstance(t, (int, float)) or t <= 0:
                    continue
                for ref, key in (
                    (REF_F64, "speedup_vs_baseline_f64"),
                    (REF_F32, "speedup_vs_baseline_f32"),
                ):
                    t_ref = rows.get(ref, {}).get(f"{mode}_ms")
                    if isinstance(t_ref, (int, float)):
                        res[f"{mode}_{key}"] = t_ref / t
                t_floor = rows.get(REF_FLOOR, {}).get(f"{mode}_ms")
                if isinstance(t_floor, (int, float)) and t_floor > 0:
                    res[f"{mode}_ratio_to_floor"] = t / t_floor
    _add_volume_to_image_ratios(results)


def _add_volume_to_image_ratios(results: list[dict[str, Any]]) -> None:
    """For a volume row: its fwd+bwd time per voxel over the same row's time per pixel on the
    image of the run with the same batch, classes and element count (``*_per_voxel_x_image``)."""
    images = {
        (res["row"], *res["shape"][:2], math.prod(res["shape"][2:])): res
        for res in results
        if len(res["shape"]) == 4
    }
    for res in results:
        if len(res["shape"]) != 5:
            continue
        image = images.get((res["row"], *res["shape"][:2], math.prod(res["shape"][2:])), {})
        t, t_image = res.get("fwdbwd_ms"), image.get("fwdbwd_ms")
        if isinstance(t, (int, float)) and isinstance(t_image, (int, float)) and t_image > 0:
            res["fwdbwd_per_voxel_x_image"] = t / t_image


def compare_runs(
    previous: list[dict[str, Any]], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """fwd+bwd of every (row, shape) in both runs: the ratio of the medians, and whether this
    run is slower beyond noise, judged as: its fastest sample is slower than the earlier run's
    slowest (the two runs' samples do not overlap)."""
    earlier = {(r["row"], tuple(r["shape"])): r for r in previous}
    rows = []
    for res in results:
        old = earlier.get((res["row"], tuple(res["shape"])))
        new_samples = res.get("fwdbwd_samples_ms") or []
        old_samples = (old or {}).get("fwdbwd_samples_ms") or []
        if not new_samples or not old_samples:
            continue
        rows.append(
            {
                "row": res["row"],
                "shape": res["shape"],
                "previous_ms": old["fwdbwd_ms"],
                "ms": res["fwdbwd_ms"],
                "ratio": res["fwdbwd_ms"] / old["fwdbwd_ms"],
                "previous_range_ms": [min(old_samples), max(old_samples)],
                "range_ms": [min(new_samples), max(new_samples)],
                "slower_beyond_noise": min(new_samples) > max(old_samples),
            }
        )
    return rows


def _fmt(value: Any, spec: str) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return format("-", ">" + spec.split(".")[0])  # keep the column's width
    return format(value, spec)


def _shape(res: dict[str, Any]) -> str:
    return "x".join(str(s) for s in res["shape"])


def _note(res: dict[str, Any]) -> str:
    if res.get("status") == "skipped":
        return f"skipped: {res.get('reason', '')}"
    note = "; ".join(f"{k}: {v}" for k, v in (res.get("errors") or {}).items())
    return note if len(note) <= 120 else note[:117] + "..."


def format_table(results: list[dict[str, Any]]) -> str:
    """A fixed-width table, one line per (shape, row)."""
    head = (
        f"{'shape':<15} {'row':<14} {'fwd ms':>10} {'fwd+bwd ms':>11} {'peak MiB':>9} "
        f"{'x input':>8} {'rss MiB':>8} {'vs b-f64':>9} {'vs b-f32':>9} {'/ floor':>8}  note"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        lines.append(
            f"{_shape(res):<15} {res['row']:<14} {_fmt(res.get('fwd_ms'), '10.3f')} "
            f"{_fmt(res.get('fwdbwd_ms'), '11.3f')} {_fmt(res.get('peak_extra_mib'), '9.2f')} "
            f"{_fmt(res.get('peak_extra_x_input'), '8.2f')} "
            f"{_fmt(res.get('rss_extra_mib'), '8.2f')} "
            f"{_fmt(res.get('fwdbwd_speedup_vs_baseline_f64'), '9.2f')} "
            f"{_fmt(res.get('fwdbwd_speedup_vs_baseline_f32'), '9.2f')} "
            f"{_fmt(res.get('fwdbwd_ratio_to_floor'), '8.2f')}  {_note(res)}".rstrip()
        )
    return "\n".join(lines)


def format_scaling(scaling: list[dict[str, Any]]) -> str:
    """The scaling section: fwd+bwd time and time per element, which is flat if linear."""
    head = f"{'sweep':<8} {'shape':<15} {'fwd+bwd ms':>11} {'ns / element':>13}  note"
    lines = ["rmi_jax fwd+bwd scaling (element = one logit, N*C*H*W per call)", head]
    lines.append("-" * len(head))
    for res in scaling:
        lines.append(
            f"{res['sweep']:<8} {_shape(res):<15} {_fmt(res.get('fwdbwd_ms'), '11.3f')} "
            f"{_fmt(res.get('ns_per_element'), '13.3f')}  {_note(res)}".rstrip()
        )
    return "\n".join(lines)


def format_targets(judged: list[dict[str, Any]]) -> str:
    """One line per target: the bound, what this run measured, and whether it is met."""
    lines = ["targets, judged on this run:"]
    for item in judged:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[item["met"]]
        lines.append(
            f"  [{item['issue']}] {item['target']:<66} measured {_fmt(item['measured'], '9.3f')}"
            f"  {verdict}"
        )
    return "\n".join(lines)


def format_comparison(compared: list[dict[str, Any]], previous_path: str) -> str:
    """fwd+bwd of this run against an earlier one, row by row."""
    lines = [
        f"fwd+bwd against {previous_path} (slower beyond noise: this run's fastest sample is "
        "slower than the earlier run's slowest)",
        f"{'shape':<15} {'row':<14} {'before ms':>10} {'now ms':>10} {'now/before':>11}  verdict",
    ]
    for item in compared:
        verdict = "SLOWER beyond noise" if item["slower_beyond_noise"] else "within noise or faster"
        lines.append(
            f"{_shape(item):<15} {item['row']:<14} {item['previous_ms']:10.3f} "
            f"{item['ms']:10.3f} {item['ratio']:11.2f}  {verdict}"
        )
    return "\n".join(lines)
