#!/usr/bin/env bash
# Create .venv in the repository root and install everything DenseCLIP needs, pinned.
# Idempotent: a second run only checks the environment. Set DETECTRON2_SRC=<path or git URL> to
# build an upstream Detectron2 instead of the PyPI v0.6 sources.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV_PY=.venv/bin/python
STAMP=.venv/.denseclip-setup
FINGERPRINT="$(cat requirements/lock.txt setup.py scripts/install_detectron2.py | sha256sum | cut -d' ' -f1) ${DETECTRON2_SRC:-}"

if [ ! -x "$VENV_PY" ]; then
  echo "[setup] creating virtual environment .venv"
  "$PYTHON" -m venv .venv
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$FINGERPRINT" ] \
   && "$VENV_PY" -c "import detectron2, open_clip, denseclip" >/dev/null 2>&1; then
  echo "[setup] environment is up to date (.venv)"
  exit 0
fi

pip_install() { "$VENV_PY" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }

echo "[setup] installing pinned packages (torch, open_clip, fvcore, pycocotools, ...)"
pip_install pip==25.3 setuptools==80.9.0 wheel==0.45.1
pip_install -r requirements/lock.txt
echo "[setup] installing Detectron2"
"$VENV_PY" scripts/install_detectron2.py 2> >(grep -v "FutureWarning\|warnings.warn\|^WARNING: Location" >&2)
echo "[setup] installing denseclip (editable)"
pip_install --no-deps --no-build-isolation -e .
echo "$FINGERPRINT" > "$STAMP"
echo "[setup] done: $("$VENV_PY" -c 'import torch, detectron2, open_clip; print("torch", torch.__version__, "| detectron2", detectron2.__version__, "| open_clip", open_clip.__version__)')"
