#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh), lint (ruff) and run the test suite on CPU.
# tiny_coco tests use $DENSECLIP_TINY_COCO (default: ../shared/data/tiny_coco) and skip if absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
export DENSECLIP_TINY_COCO="${DENSECLIP_TINY_COCO:-$(cd .. && pwd)/shared/data/tiny_coco}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
echo "[test] ruff check (ruff.toml)"
.venv/bin/ruff check --no-cache .
exec .venv/bin/python -m pytest tests "$@"
