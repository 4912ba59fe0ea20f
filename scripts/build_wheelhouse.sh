#!/usr/bin/env bash
# Build the wheelhouse that scripts/gpu_check.sh installs from on a machine WITHOUT network access
# (a GPU machine with its own PyTorch). Run here, on a machine with PyPI access:
#
#   bash scripts/build_wheelhouse.sh [--python-version 3.12] [--platform manylinux_2_28_x86_64] [--output .wheelhouse]
#
# It holds the project's runtime dependencies at the versions of requirements/lock.txt, for the
# target's Python version and platform, EXCEPT torch, torchvision, triton and the NVIDIA/CUDA
# libraries (the target's own are used, never replaced) and the large packages every PyTorch image
# has (NumPy, Pillow, matplotlib, OpenCV, TensorBoard and their dependencies; --all adds them).
# Detectron2 is built from the pb1-detectron2 v0.6 sdist, patched as by scripts/install_detectron2.py,
# as a pure-Python wheel (detectron2._C is an empty Python module instead of an empty C++
# extension), so it installs on any Python version: no compiler and no target Python needed here.
# requirements.txt in the wheelhouse lists what gpu_check.sh may install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_VERSION=3.12
PLATFORM=manylinux_2_28_x86_64
OUTPUT=.wheelhouse
ALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYTHON_VERSION=$2; shift 2 ;;
    --platform) PLATFORM=$2; shift 2 ;;
    --output) OUTPUT=$2; shift 2 ;;
    --all) ALL=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build_wheelhouse.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { bash scripts/setup.sh; PY=.venv/bin/python; }

# Never shipped: the target's PyTorch stack. Not needed at run time: the test runner and its helpers.
EXCLUDE='^(torch|torchvision|triton|nvidia-.*|cuda-.*|sympy|mpmath|networkx|jinja2|markupsafe|pytest|iniconfig|pluggy|pygments|truststore)$'
# Large, and in every PyTorch image: left out unless --all.
COMMON='^(numpy|pillow|matplotlib|contourpy|cycler|fonttools|kiwisolver|pyparsing|python-dateutil|opencv-python-headless|tensorboard|tensorboard-data-server|grpcio|protobuf|absl-py|markdown|werkzeug)$'

rm -rf "$OUTPUT"
mkdir -p "$OUTPUT"
requirements=()
while IFS= read -r line; do
  name=${line%%==*}
  lower=$(echo "$name" | tr 'A-Z_' 'a-z-')
  if echo "$lower" | grep -Eq "$EXCLUDE"; then continue; fi
  if [ "$ALL" = 0 ] && echo "$lower" | grep -Eq "$COMMON"; then continue; fi
  requirements+=("$line")
done < <(grep -E '^[A-Za-z0-9_.-]+==' requirements/lock.txt)

platforms=(--platform "$PLATFORM")
case "$PLATFORM" in  # pip matches manylinux tags exactly: also accept the older ones
  manylinux_2_*_x86_64) for tag in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$tag"); done ;;
esac
pyver=${PYTHON_VERSION//./}

echo "[wheelhouse] ${#requirements[@]} packages for CPython $PYTHON_VERSION / $PLATFORM into $OUTPUT"
for req in "${requirements[@]}"; do
  # Binary wheels for the target where they exist; a pure-Python wheel built here otherwise (sdist-only packages).
  if ! "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version "$pyver" --implementation cp "${platforms[@]}" -d "$OUTPUT" "$req" 2>/dev/null; then
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$OUTPUT" "$req"
  fi
done
"$PY" scripts/install_detectron2.py --wheel-dir "$OUTPUT" >/dev/null
for whl in "$OUTPUT"/*.whl; do  # a wheel built here from an sdist must be pure Python to install there
  case "$whl" in *-none-any.whl|*-cp${pyver}-*|*-abi3-*) ;; *) echo "[wheelhouse] not installable on the target: $whl" >&2; exit 1 ;; esac
done
printf '%s\n' "${requirements[@]}" detectron2==0.6 > "$OUTPUT/requirements.txt"
size=$(du -sm "$OUTPUT" | cut -f1)
echo "[wheelhouse] $(ls "$OUTPUT"/*.whl | wc -l) wheels, ${size} MiB: $OUTPUT"
if [ "$size" -ge 60 ]; then echo "[wheelhouse] larger than the 64 MiB a device call carries" >&2; exit 1; fi
