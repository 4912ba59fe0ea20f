"""The benchmark's report: Markdown rendering, the console summary and the JSON file."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .targets import lookup


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _time_cell(t: Optional[Dict[str, Any]]) -> str:
    if not t:
        return "–"
    return f"{t['median_ms']:.1f} (IQR {t['iqr_ms']:.1f}; {t['min_ms']:.1f}–{t['max_ms']:.1f})"


def _workload_cell(w: Optional[Dict[str, Any]]) -> str:
    if not w:
        return "–"
    props = w.get("proposals_per_image")
    dets = w.get("detections_per_image")
    return f"{'–' if props is None else '/'.join(map(str, props))} / {'–' if dets is None else '/'.join(map(str, dets))}"


def render_markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    a = report["settings"]
    lines = [
        "# DenseCLIP benchmark",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- machine: CPU {m['cpu']} ({m['cpu_count']} logical cores, {m['torch_threads']} torch threads)"
        + (f"; GPU {m['gpu']}" if m.get("gpu") else "; no GPU used"),
        f"- software: torch {m['torch']} (CUDA {m['cuda']}), detectron2 {m['detectron2']}, fvcore {m.get('fvcore', '?')}, "
        f"python {m['python']}, {m['platform']}",
        f"- device {a['device']}, AMP {a['amp_dtype'] or 'off'}, warm-up {a['warmup']}, repeats {a['repeats']}, "
        f"train batch {a['batch_train']}, throughput batch {a['batch_throughput']}, seed {a['seed']}, "
        f"test score threshold {'as configured' if a['keep_score_thresh'] else '0 (100 detections per image)'}",
        "- random weights; synthetic inputs; times in ms: median (IQR; min–max)",
        "",
        "## Parameters and FLOPs",
        "",
        f"FLOPs: fvcore, 1 multiply-add = 1 flop, batch 1 at {a['flops_size']}.",
        "",
        "| config | params (M) | trainable (M) | w/o frozen text (M) | paper params (M) | GFLOPs | paper GFLOPs | proposals / detections | unsupported ops skipped |",  # noqa: E501 (a Markdown table header)
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        p = r["params"]
        paper = r.get("paper") or {}
        unsupported = lookup(r, "flops", "unsupported_ops")
        unsupported_txt = ", ".join(f"{k} ×{v}" for k, v in unsupported.items()) if unsupported else ("none" if unsupported == {} else "–")
        lines.append(
            f"| {r['name']} | {p['total'] / 1e6:.2f} | {p['trainable'] / 1e6:.2f} | "
            f"{p['excluding_frozen_text_encoder'] / 1e6:.2f} | {_fmt(paper.get('params_m'), 0)} | "
            f"{_fmt(lookup(r, 'flops', 'gflops'))} | {_fmt(paper.get('gflops'), 0)} | "
            f"{_workload_cell(lookup(r, 'flops', 'workload'))} | {unsupported_txt} |"
        )
    for size in a["sizes"]:
        lines += [
            "",
            f"## Speed and memory at {size}",
            "",
            "| config | train iter (ms) | inference batch 1 (ms) | throughput (img/s) | peak mem train / infer / throughput (MB) | proposals / detections | text encoder calls (timed) |",  # noqa: E501 (a Markdown table header)
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["results"]:
            e = r.get("sizes", {}).get(size, {})
            tp = e.get("throughput")
            tp_cell = "–" if not tp else f"{tp['images_per_s']:.2f} ({tp['images_per_s_min']:.2f}–{tp['images_per_s_max']:.2f})"
            mems = " / ".join(_fmt(lookup(e, k, "memory", "peak_mb"), 0) for k in ("train", "inference", "throughput"))
            calls = e.get("text_encoder_calls_timed")
            lines.append(f"| {r['name']} | {_time_cell(e.get('train'))} | {_time_cell(e.get('inference'))} | "
                         f"{tp_cell} | {mems} | {_workload_cell(e.get('workload'))} | {_fmt(calls)} |")
        method = next((lookup(r, "sizes", size, ph, "memory", "method") for r in report["results"]
                       for ph in ("train", "inference") if lookup(r, "sizes", size, ph, "memory", "method")), None)
        if method:
            lines += ["", f"Memory: {method}."]
        utils = [(r["name"], lookup(r, "sizes", size, "utilization")) for r in report["results"]]
        utils = [(n, u) for n, u in utils if u]
        if utils:
            lines += ["", f"Utilisation of {a['peak_tflops']:.1f} TFLOP/s peak (2 flops per multiply-add; training "
                      "counts 3x the inference FLOPs, an estimate):", "",
                      "| config | GMACs / image | inference TFLOP/s (of peak) | throughput TFLOP/s (of peak) | train TFLOP/s (of peak) |",
                      "|---|---|---|---|---|"]
            for name, u in utils:
                cells = [f"{u[ph]['achieved_tflops']:.2f} ({u[ph]['fraction_of_peak']:.1%})" if ph in u else "–"
                         for ph in ("inference", "throughput", "train")]
                lines.append(f"| {name} | {u['gmacs_per_image']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "## Ratios (subject / reference)", "",
              "| subject | reference | size | train time | inference time | throughput | train mem | inference mem | FLOPs | params |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        sizes = c["sizes"] or {"–": {}}
        for size, s in sizes.items():
            lines.append(
                f"| {c['subject']} | {c['reference']} | {size} | {_fmt(s.get('train_time_ratio'), 3)} | "
                f"{_fmt(s.get('inference_time_ratio'), 3)} | {_fmt(s.get('throughput_ratio'), 3)} | "
                f"{_fmt(s.get('train_memory_ratio'), 3)} | {_fmt(s.get('inference_memory_ratio'), 3)} | "
                f"{_fmt(c['flops_ratio'], 3)} | {_fmt(c['params_ratio'], 3)} |"
            )
    paired_rows = [(c, size, phase, lookup(stats, "ratio"), stats) for c in report["comparisons"]
                   for size, phases in (c.get("paired") or {}).items() for phase, stats in phases.items()]
    if paired_rows:
        lines += ["", "## Paired rounds (subject / reference, both resident, timed in alternation)", "",
                  "| subject | reference | size | phase | ratio: median (IQR; min–max) | rounds | subject ms | reference ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for c, size, phase, r, stats in paired_rows:
            lines.append(
                f"| {c['subject']} | {c['reference']} | {size} | {phase} | {r['median']:.3f} ({r['q1']:.3f}–{r['q3']:.3f}; "
                f"{r['min']:.3f}–{r['max']:.3f}) | {r['rounds']} | {_time_cell(stats['subject'])} | "
                f"{_time_cell(stats['reference'])} |")
    lines += ["", "## Targets", "", "| check | value | target | status | note |", "|---|---|---|---|---|"]
    for ch in report["checks"]:
        lines.append(f"| {ch['check']} | {_fmt(ch['value'], 3)} | {ch['target']} | **{ch['status']}** | {ch['note']} |")
    breakdowns = [(r["name"], size, e["breakdown"]) for r in report["results"]
                  for size, e in r.get("sizes", {}).items() if e.get("breakdown")]
    if breakdowns:
        lines += ["", "## Inference time per component (batch 1, median ms and share of the total)", ""]
        for name, size, b in breakdowns:
            comps = b["components"]
            lines += [f"**{name} @{size}**", "", "| component | ms | share |", "|---|---|---|"]
            for k, v in comps.items():
                lines.append(f"| {k} | {v['median_ms']:.2f} | {v['fraction']:.1%} |")
            lines.append("")
    profiles = [(r["name"], size, e["profile"]) for r in report["results"]
                for size, e in r.get("sizes", {}).items() if e.get("profile")]
    if profiles:
        lines += ["## Top operators of inference (torch.profiler, batch 1, self time per inference)", ""]
        for name, size, prof in profiles:
            lines += [f"**{name} @{size}** (all operators: {prof['total_self_ms']:.1f} ms)", "",
                      "| operator | self ms | calls |", "|---|---|---|"]
            lines += [f"| {op['op']} | {op['self_ms']:.2f} | {op['calls']} |" for op in prof["ops"]]
            lines.append("")
    flops_parts = [(r["name"], r["flops"]["by_component_gflops"]) for r in report["results"] if r.get("flops")]
    if flops_parts:
        keys = ("image_encoder", "text_encoder", "context_decoder", "fpn", "proposal_generator", "roi_heads",
                "retinanet_head", "other")
        lines += ["## GFLOPs per module", "", "| config | image encoder | text encoder | context decoder | "
                  "FPN | RPN | ROI heads | RetinaNet head | score maps & other |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, parts in flops_parts:
            lines.append(f"| {name} | " + " | ".join(_fmt(parts.get(k), 2 if k == "other" else 1)
                                                   for k in keys) + " |")
        lines.append("")
    errors = {r["name"]: r["errors"] for r in report["results"] if r.get("errors")}
    if errors:
        lines += ["## Errors", ""]
        for name, errs in errors.items():
            for phase, err in errs.items():
                lines.append(f"- {name} {phase}: `{err}`")
        lines.append("")
    return "\n".join(lines) + "\n"


def print_summary(report: Dict[str, Any]) -> None:
    print()
    for r in report["results"]:
        parts = [f"{r['name']}: params {r['params']['total'] / 1e6:.2f}M (trainable {r['params']['trainable'] / 1e6:.2f}M)"]
        if r.get("flops"):
            parts.append(f"{r['flops']['gflops']:.1f} GFLOPs@{r['flops']['size']}")
        for size, e in r.get("sizes", {}).items():
            if e.get("train"):
                parts.append(f"train {e['train']['median_ms']:.1f}ms@{size}")
            if e.get("inference"):
                parts.append(f"infer {e['inference']['median_ms']:.1f}ms")
            if e.get("throughput"):
                parts.append(f"{e['throughput']['images_per_s']:.2f} img/s")
            if e.get("text_encoder_calls_timed") is not None:
                parts.append(f"text-encoder calls (timed) {e['text_encoder_calls_timed']}")
        print(", ".join(parts))
    for c in report["comparisons"]:
        bits = [f"FLOPs x{_fmt(c['flops_ratio'], 3)}", f"params x{_fmt(c['params_ratio'], 3)}"]
        for size, s in c["sizes"].items():
            bits.append(f"@{size}: train x{_fmt(s['train_time_ratio'], 3)}, infer x{_fmt(s['inference_time_ratio'], 3)}, "
                        f"throughput x{_fmt(s['throughput_ratio'], 3)}, train mem x{_fmt(s['train_memory_ratio'], 3)}, "
                        f"infer mem x{_fmt(s['inference_memory_ratio'], 3)}")
        for size, phases in (c.get("paired") or {}).items():
            bits += [f"@{size} paired {phase} x{stats['ratio']['median']:.3f}" for phase, stats in phases.items()]
        print(f"{c['subject']} / {c['reference']}: " + "; ".join(bits))
    for ch in report["checks"]:
        print(f"[{ch['status']}] {ch['check']}: {_fmt(ch['value'], 3)} (target {ch['target']}){' - ' + ch['note'] if ch['note'] else ''}")


def _json_default(o: Any) -> Any:
    if isinstance(o, (torch.dtype, Path)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_report(report: Dict[str, Any], json_path: Optional[str], md_path: Optional[str]) -> None:
    """The JSON (every field) and the Markdown report, where paths are given."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2, default=_json_default)
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        with open(md_path, "w") as f:
            f.write(render_markdown(report))
