#!/usr/bin/env bash
# One command that checks the GPU path: AMP training (float16 and bfloat16) of the paper's Mask R-CNN,
# its language-guided variant and RetinaNet, evaluation, the demo, and the CUDA benchmark (fp32 and
# AMP), written to one Markdown + JSON report; non-zero exit on any failure.
#
#   bash scripts/gpu_check.sh                                  # --device cuda --output output/gpu_check
#   bash scripts/gpu_check.sh --device cpu --tiny --output /tmp/dry   # the CPU dry run (tests/test_gpu_check.py)
#
# For a machine with a CUDA GPU and PyTorch but no network: build the wheelhouse beforehand where PyPI
# is reachable (bash scripts/build_wheelhouse.sh), and bring .wheelhouse/ along. What the machine's
# Python lacks is installed from it into $GPU_CHECK_SITE (default .gpu_check_site/) with
# `pip install --no-index --no-deps --target`: the machine's own packages (torch first) are never
# touched or shadowed. Options after the script name go to `python tools/gpu_check.py`
# (--help lists them). Real COCO images for the evaluation: DENSECLIP_TINY_COCO=<tiny_coco root>.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-.wheelhouse}
SITE=${GPU_CHECK_SITE:-.gpu_check_site}

if [ -f "$WHEELHOUSE/requirements.txt" ]; then
  # The wheelhouse's requirements that no installed distribution provides yet.
  missing=$("$PYTHON" - "$WHEELHOUSE/requirements.txt" "$SITE" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, distribution
sys.path.insert(0, sys.argv[2])
for line in open(sys.argv[1]):
    name = line.split("==")[0].strip()
    if not name:
        continue
    try:
        distribution(name)
    except PackageNotFoundError:
        print(line.strip())
PY
)
  if [ -n "$missing" ]; then
    echo "[gpu_check] installing into $SITE from $WHEELHOUSE:" $missing
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --find-links "$WHEELHOUSE" --target "$SITE" $missing
  fi
fi
export PYTHONPATH="$PWD/$SITE:$PWD/projects/DenseCLIP${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
if ! "$PYTHON" -c "import torch, detectron2, open_clip, fvcore, pycocotools, cv2, matplotlib" 2>/dev/null; then
  "$PYTHON" -c "import torch, detectron2, open_clip, fvcore, pycocotools, cv2, matplotlib" || true
  echo "[gpu_check] missing packages: run scripts/build_wheelhouse.sh (--all adds NumPy, OpenCV, matplotlib...)" \
       "where PyPI is reachable and bring $WHEELHOUSE/ along" >&2
  exit 3
fi
if [ $# -eq 0 ]; then set -- --device cuda --output output/gpu_check; fi
exec "$PYTHON" tools/gpu_check.py "$@"
