"""report.md of the GPU check: machine, training runs, demo, benchmark figures, checks."""
from __future__ import annotations

from typing import Any, Dict, List


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _runs_table(runs: List[Dict[str, Any]]) -> List[str]:
    lines = ["| run | AMP dtype | step trainer | iterations | total loss first → last | s / iter | train peak MB | "
             "eval images | AP box / mask | text-encoder calls after 1st image | demo images | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        total = (r.get("losses") or {}).get("total_loss") or {}
        ev = r.get("evaluation") or {}
        metrics = ev.get("metrics") or {}
        per_iter = r["train_seconds"] / r["iterations"] if "train_seconds" in r else None
        lines.append(
            f"| {r['run']} | {r['precision']} | {r.get('step_trainer', '–')} | {r['iterations']} | "
            f"{_fmt(total.get('first'), 3)} → {_fmt(total.get('last'), 3)} | {_fmt(per_iter)} | "
            f"{_fmt(r.get('train_peak_memory_mb'), 0)} | {_fmt(ev.get('images'))} | "
            f"{_fmt((metrics.get('bbox') or {}).get('AP'), 1)} / {_fmt((metrics.get('segm') or {}).get('AP'), 1)} | "
            f"{_fmt(ev.get('text_encoder_calls_after_first_image'))} | {_fmt((r.get('demo') or {}).get('images'))} | "
            f"{'; '.join(f'{k}: {v}' for k, v in r['errors'].items()) or '–'} |")
    return lines


def _benchmark_tables(b: Dict[str, Any]) -> List[str]:
    if "error" in b:
        return [f"Benchmark {b['mode']} failed: `{b['error']}`", ""]
    h = b["headline"]
    lines = [f"### Benchmark {b['mode']}{' (' + b['amp_dtype'] + ')' if b.get('amp_dtype') else ''}", "",
             f"Full report: `{b['markdown']}` (JSON: `{b['json']}`). Peak for utilisation: "
             f"{_fmt(h['peak_tflops'], 1)} TFLOP/s; GPU: {h['gpu'] or 'none'}.", "",
             "| config | size | images/s batch 1 | throughput images/s | train ms (batch 2) | train peak MB | "
             "inference peak MB | TFLOP/s inference / throughput / train (fraction of peak) | GFLOPs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in h["configs"].values():
        util = " / ".join(f"{_fmt(c['achieved_tflops'][ph])} ({_fmt(c['fraction_of_peak'][ph], 3)})"
                          for ph in ("inference", "throughput", "train"))
        lines.append(f"| {c['name']} | {c['size']} | {_fmt(c['images_per_s_batch1'])} | "
                     f"{_fmt(c['throughput_images_per_s'])} | {_fmt(c['train_ms'], 1)} | "
                     f"{_fmt(c['train_peak_memory_mb'], 0)} | {_fmt(c['inference_peak_memory_mb'], 0)} | {util} | "
                     f"{_fmt(h['gflops'].get(c['name']), 1)} |")
    if h["paired"]:
        lines += ["", "| subject / reference | size | phase | paired ratio (median) |", "|---|---|---|---|"]
        lines += [f"| {p['subject']} / {p['reference']} | {p['size']} | {p['phase']} | {p['ratio']:.3f} |"
                  for p in h["paired"]]
    return lines + [""]


def render_markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    data = report.get("data") or {}
    lines = [
        "# DenseCLIP GPU check",
        "",
        f"- result: **{'PASSED' if report['passed'] else 'FAILED'}**",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- device: {report['device']}{' (dry run: --tiny)' if report['tiny'] else ''}; GPU {m.get('gpu') or 'none'}; "
        f"CPU {m['cpu']} ({m['cpu_count']} cores)",
        f"- software: torch {m['torch']} (CUDA {m['cuda']}, from {report['torch_file']}), detectron2 {m['detectron2']}, "
        f"open_clip {m.get('open_clip_torch', '?')}, fvcore {m.get('fvcore', '?')}, python {m['python']}",
        f"- evaluation data: {data.get('name', '–')} ({data.get('test', '–')}); random weights",
        "",
    ]
    if report["runs"]:
        lines += ["## Training (AMP), evaluation, demo", ""] + _runs_table(report["runs"]) + [""]
    if report["benchmarks"]:
        lines += ["## Benchmark", ""]
        for b in report["benchmarks"]:
            lines += _benchmark_tables(b)
    lines += ["## Checks", "", "| check | value | target | status | enforced | note |", "|---|---|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['check']} | {_fmt(c['value'], 3)} | {c['target']} | **{c['status']}** | "
                     f"{'yes' if c['enforced'] else 'no'} | {c['note']} |")
    return "\n".join(lines) + "\n"
