#!/usr/bin/env python
"""Speed, memory, FLOPs and parameters of DenseCLIP vs its CLIP baselines and Detectron2's R50-FPN,
in one process on the same synthetic inputs (docs/BENCHMARKS.md; the code: tools/benchmarking/).

    python tools/benchmark.py --device cuda --output-json bench.json --output-md bench.md
    python tools/benchmark.py --device cpu --sizes 640x384 --repeats 3 --skip-flops
    python tools/benchmark.py --help
"""
import os
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
# The tool's modules (tools/benchmarking/) and, where the project is not pip-installed, the library.
sys.path[:0] = [str(TOOLS), str(TOOLS.parent / "projects" / "DenseCLIP")]
# Models are built with random weights: nothing may be fetched from the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarking.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
