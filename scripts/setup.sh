#!/usr/bin/env bash
# Create .venv in the repository root and install everything DenseCLIP needs, pinned.
# Idempotent: a second run only checks the environment. Set DETECTRON2_SRC=<path or git URL> to
# build an upstream Detectron2 instead of the PyPI v0.6 sources. The choice is remembered in .venv:
# later runs without the variable (scripts/test.sh, scripts/quickstart.sh) keep that Detectron2;
# DETECTRON2_SRC= (set, empty) goes back to the v0.6 sources.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV_PY=.venv/bin/python
STAMP=.venv/.denseclip-setup
CHOICE=.venv/.denseclip-detectron2-src
if [ -z "${DETECTRON2_SRC+set}" ]; then
  if [ -f "$CHOICE" ]; then
    DETECTRON2_SRC="$(cat "$CHOICE")"
  elif [ -f "$STAMP" ]; then  # set up before the choice was remembered: the stamp ends with it
    DETECTRON2_SRC="$(cut -d' ' -f2- "$STAMP")"
  fi
fi
export DETECTRON2_SRC="${DETECTRON2_SRC:-}"
if [ -n "$DETECTRON2_SRC" ]; then
  D2_CHOICE="upstream Detectron2 from DETECTRON2_SRC=$DETECTRON2_SRC (remembered in $CHOICE; DETECTRON2_SRC= bash scripts/setup.sh goes back to v0.6)"
else
  D2_CHOICE="Detectron2 v0.6 from the PyPI sources (DETECTRON2_SRC=<checkout or git URL> bash scripts/setup.sh for an upstream one)"
fi
FINGERPRINT="$(cat requirements/lock.txt requirements/web.txt requirements/lvis.txt setup.py scripts/install_detectron2.py | sha256sum | cut -d' ' -f1) ${DETECTRON2_SRC}"
describe_detectron2() {
  "$VENV_PY" -c 'import os, detectron2; print("detectron2", detectron2.__version__, "at", os.path.dirname(detectron2.__file__))'
}

if [ ! -x "$VENV_PY" ]; then
  echo "[setup] creating virtual environment .venv"
  "$PYTHON" -m venv .venv
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$FINGERPRINT" ] \
   && "$VENV_PY" -c "import detectron2, open_clip, denseclip" >/dev/null 2>&1; then
  echo "[setup] environment is up to date (.venv): $(describe_detectron2); $D2_CHOICE"
  exit 0
fi

pip_install() { "$VENV_PY" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }

echo "[setup] installing pinned packages (torch, open_clip, fvcore, pycocotools, ...)"
pip_install pip==25.3 setuptools==80.9.0 wheel==0.45.1
pip_install -r requirements/lock.txt
echo "[setup] installing $D2_CHOICE"
# PIP_QUIET: pip -q for the pip commands the installer runs (~70 "Requirement already satisfied"
# lines otherwise); PIP_* variables are pip's own way to set its options.
PIP_QUIET=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV_PY" scripts/install_detectron2.py 2> >(grep -v "FutureWarning\|warnings.warn\|^WARNING: Location" >&2)
printf '%s\n' "$DETECTRON2_SRC" > "$CHOICE"
echo "[setup] installing denseclip (editable)"
pip_install --no-deps --no-build-isolation -e .
echo "[setup] installing the web demo's extra (web: Gradio, pinned in setup.py and requirements/web.txt)"
pip_install --no-build-isolation -c requirements/lock.txt -c requirements/web.txt -e ".[web]"
echo "[setup] installing the deploy extra (onnx, onnxscript, onnxruntime; pinned in setup.py)"; pip_install --no-build-isolation -c requirements/lock.txt -e ".[deploy]"
echo "[setup] installing the LVIS evaluation package (lvis, pinned in requirements/lvis.txt; without its dependencies)"
pip_install --no-deps -r requirements/lvis.txt
echo "$FINGERPRINT" > "$STAMP"
echo "[setup] Detectron2 in use: $(describe_detectron2); $D2_CHOICE"
echo "[setup] done: $("$VENV_PY" -c 'import torch, detectron2, open_clip; print("torch", torch.__version__, "| detectron2", detectron2.__version__, "| open_clip", open_clip.__version__)')"
