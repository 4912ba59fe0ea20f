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
# Two workers, a test file each at a time (module fixtures stay in one process): the suite is mostly
# single-threaded work (model builds, train_net subprocesses), so this halves its time on 2 cores.
# DENSECLIP_TEST_WORKERS=0 runs it in one process; "-n N" among the arguments overrides it.
exec .venv/bin/python -m pytest tests -n "${DENSECLIP_TEST_WORKERS:-2}" --dist loadfile "$@"
