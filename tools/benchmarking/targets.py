"""Comparisons (subject / reference ratios: DenseCLIP vs its CLIP baseline, and vs Detectron2's
R50-FPN Mask R-CNN) and the targets they are checked against."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .configs import PAPER_FLOPS_SIZE

TARGETS = {
    "inference_time_ratio_max": 1.10,
    "train_time_ratio_max": 1.15,
    "flops_rel_tolerance": 0.10,
}


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def lookup(d: Optional[Dict[str, Any]], *keys) -> Any:
    """d[k1][k2]..., or None where a key is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def find_pairs(results: List[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], Dict[str, Any], str]]:
    """(subject, reference, kind) pairs: DenseCLIP vs its CLIP baseline, and DenseCLIP / CLIP vs
    Detectron2's stock R50-FPN Mask R-CNN."""
    by_name = {r["name"]: r for r in results}
    stock = [r for r in results if r["variant"] == "detectron2"]
    pairs = []
    for r in results:
        if r["variant"] == "denseclip":
            baseline = by_name.get(r["name"].replace("denseclip", "clip"))
            if baseline is None:  # same detector and encoder among the CLIP / plain ImageNet-backbone configs
                baseline = next((b for b in results if b["variant"] in ("clip", "in1k") and b["detector"] == r["detector"]
                                 and b["encoder"] == r["encoder"]), None)
            if baseline is not None:
                pairs.append((r, baseline, "denseclip_vs_clip_baseline"))
        if r["variant"] in ("denseclip", "clip"):
            for s in stock:
                pairs.append((r, s, "vs_detectron2_stock"))
    return pairs


def compare(a: Dict[str, Any], b: Dict[str, Any], kind: str, paired: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Ratios subject / reference from the per-config results, and the paired rounds' ratios
    (``paired_ratios``) where they were measured."""
    comp: Dict[str, Any] = {"subject": a["name"], "reference": b["name"], "kind": kind, "sizes": {}, "paired": paired}
    comp["flops_ratio"] = _ratio(lookup(a, "flops", "gflops"), lookup(b, "flops", "gflops"))
    comp["params_ratio"] = _ratio(lookup(a, "params", "total"), lookup(b, "params", "total"))
    comp["params_excluding_frozen_text_ratio"] = _ratio(lookup(a, "params", "excluding_frozen_text_encoder"),
                                                       lookup(b, "params", "excluding_frozen_text_encoder"))
    comp["trainable_params_ratio"] = _ratio(lookup(a, "params", "trainable"), lookup(b, "params", "trainable"))
    for size in a.get("sizes", {}):
        sa, sb = a["sizes"][size], b.get("sizes", {}).get(size, {})
        comp["sizes"][size] = {
            "train_time_ratio": _ratio(lookup(sa, "train", "median_ms"), lookup(sb, "train", "median_ms")),
            "inference_time_ratio": _ratio(lookup(sa, "inference", "median_ms"), lookup(sb, "inference", "median_ms")),
            "throughput_ratio": _ratio(lookup(sa, "throughput", "images_per_s"), lookup(sb, "throughput", "images_per_s")),
            "train_memory_ratio": _ratio(lookup(sa, "train", "memory", "peak_mb"), lookup(sb, "train", "memory", "peak_mb")),
            "inference_memory_ratio": _ratio(lookup(sa, "inference", "memory", "peak_mb"),
                                             lookup(sb, "inference", "memory", "peak_mb")),
            "throughput_memory_ratio": _ratio(lookup(sa, "throughput", "memory", "peak_mb"),
                                              lookup(sb, "throughput", "memory", "peak_mb")),
            "train_memory_delta_ratio": _ratio(lookup(sa, "train", "memory", "peak_delta_mb"),
                                               lookup(sb, "train", "memory", "peak_delta_mb")),
            "inference_memory_delta_ratio": _ratio(lookup(sa, "inference", "memory", "peak_delta_mb"),
                                                   lookup(sb, "inference", "memory", "peak_delta_mb")),
        }
    return comp


def _check(name: str, value: Optional[float], limit: str, passed: Optional[bool], note: str = "") -> Dict[str, Any]:
    status = "N/A" if passed is None else ("PASS" if passed else "FAIL")
    return {"check": name, "value": value, "target": limit, "status": status, "note": note}


def _target_ratio(comp: Dict[str, Any], size: str, phase: str, separate: Optional[float]) -> Tuple[Optional[float], str]:
    """The ratio a time target is checked on: the paired rounds' median where measured (steady
    under a drifting machine speed), else the ratio of the separately timed phases."""
    paired = lookup(comp, "paired", size, phase, "ratio")
    if paired is None:
        return separate, "separate phases"
    return paired["median"], (f"median of {paired['rounds']} alternating rounds (IQR {paired['q1']:.3f}–"
                              f"{paired['q3']:.3f}); separate phases {'–' if separate is None else f'{separate:.3f}'}")


def evaluate_targets(results: List[Dict[str, Any]], comparisons: List[Dict[str, Any]], args) -> List[Dict[str, Any]]:
    checks = []
    for comp in comparisons:
        if comp["kind"] != "denseclip_vs_clip_baseline":
            continue
        label = f"{comp['subject']} / {comp['reference']}"
        for size, s in comp["sizes"].items():
            for phase, what, key, lim in (
                ("inference", "inference", "inference_time_ratio", TARGETS["inference_time_ratio_max"]),
                ("train", "training", "train_time_ratio", TARGETS["train_time_ratio_max"]),
            ):
                v, note = _target_ratio(comp, size, phase, s[key])
                checks.append(_check(f"{what} time ratio {label} @{size}", v, f"<= {lim:.2f}",
                                     None if v is None else v <= lim, note))
    tol = TARGETS["flops_rel_tolerance"]
    for r in results:
        paper = r.get("paper")
        if paper is None or r["variant"] not in ("clip", "denseclip"):
            continue
        gflops = lookup(r, "flops", "gflops")
        note = ""
        passed = None
        if gflops is None:
            note = "FLOPs not counted"
        elif tuple(args.flops_size) != tuple(paper.get("flops_size", PAPER_FLOPS_SIZE)):
            paper_size = paper.get("flops_size", PAPER_FLOPS_SIZE)
            note = (f"FLOPs counted at {args.flops_size[0]}x{args.flops_size[1]}, the paper's are at "
                    f"{paper_size[0]}x{paper_size[1]}")
        else:
            passed = abs(gflops / paper["gflops"] - 1.0) <= tol
        checks.append(_check(f"GFLOPs {r['name']} vs paper {paper['gflops']:.0f} G", gflops,
                             f"within {tol:.0%} of {paper['gflops']:.0f}", passed, note))
    for r in results:
        if not r.get("is_denseclip"):
            continue
        for size, entry in r.get("sizes", {}).items():
            calls = entry.get("text_encoder_calls_timed")
            checks.append(_check(f"text encoder calls during timed inference {r['name']} @{size}", calls, "== 0",
                                 None if calls is None else calls == 0))
    return checks

