#!/usr/bin/env python
"""One run that proves the GPU path: AMP training (float16 and bfloat16), evaluation, the demo and
the CUDA benchmark, written to report.md / report.json; non-zero exit on any failure
(docs/BENCHMARKS.md#gpu-check; the code: tools/gpu_checking/). scripts/gpu_check.sh runs it after
installing what the machine lacks from the wheelhouse.

    python tools/gpu_check.py --device cuda --output output/gpu_check
    python tools/gpu_check.py --device cpu --tiny --output /tmp/dry     # the CPU dry run
    python tools/gpu_check.py --help
"""
import os
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
# The tool's modules (tools/gpu_checking/, tools/benchmarking/) and, where the project is not
# pip-installed, the library.
sys.path[:0] = [str(TOOLS), str(TOOLS.parent / "projects" / "DenseCLIP")]
# Models are built with random weights: nothing may be fetched from the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gpu_checking.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
