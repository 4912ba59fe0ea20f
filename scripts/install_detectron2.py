#!/usr/bin/env python
"""Install Detectron2 into the current Python environment.

Two routes:
  * default: the PyPI sdist ``pb1-detectron2==0.6`` (FAIR's v0.6 Python sources published without
    the C++ sources). We add an empty ``detectron2._C`` extension, patch the incompatibilities with
    current Pillow / NumPy / setuptools, and build it with ``--no-build-isolation``. Without the
    C++ ops, COCO evaluation uses pycocotools' Python COCOeval and NMS/ROIAlign come from torchvision.
  * ``DETECTRON2_SRC=<local checkout or git URL>``: an upstream Detectron2 source, installed as is
    (this compiles its C++/CUDA ops, so it needs a compiler, and nvcc for CUDA ops).

Run with the interpreter of the target environment: ``.venv/bin/python scripts/install_detectron2.py``.

``--wheel-dir DIR`` builds a wheel of the default route into DIR instead of installing it, for
machines without network access (scripts/build_wheelhouse.sh). That wheel is pure Python
(``py3-none-any``): ``detectron2._C`` is an empty Python module rather than an empty C++ extension,
so one wheel built here installs on any Python version and platform; Detectron2 behaves the same
(its C++ ops are absent in both cases, and ``from detectron2 import _C`` works in both).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_REQUIREMENT = "pb1-detectron2==0.6"

# A valid, empty CPython extension module: setup.py insists on compiling detectron2/layers/csrc,
# and Detectron2 imports ``detectron2._C`` lazily only for the ops we do not use on this route.
EMPTY_EXTENSION_SOURCE = """\
// Placeholder for Detectron2's C++ ops, which the pb1-detectron2 sdist does not ship.
#include <Python.h>

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
"""

# (file glob, regex, replacement): each fix keeps v0.6 behaviour on current dependency versions.
SOURCE_FIXES = [
    # Pillow >= 10 removed the Image.LINEAR alias of Image.BILINEAR.
    ("detectron2/**/*.py", r"\bImage\.LINEAR\b", "Image.BILINEAR"),
    # NumPy >= 1.24 removed the aliases of the builtin scalar types.
    ("detectron2/**/*.py", r"\bnp\.(int|float|str|bool)\b(?!_)", r"\1"),
]


def log(message: str) -> None:
    print(f"[install_detectron2] {message}", flush=True)


def pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def patch_sources(src: Path) -> None:
    """Apply the compatibility fixes to an extracted pb1-detectron2 sdist, idempotently."""
    for pattern, regex, replacement in SOURCE_FIXES:
        for path in src.glob(pattern):
            text = path.read_text()
            new_text = re.sub(regex, replacement, text)
            if new_text != text:
                path.write_text(new_text)
                log(f"patched {path.relative_to(src)}")

    # setuptools >= 82 no longer ships pkg_resources; model_zoo only needs a path inside the package.
    model_zoo = src / "detectron2" / "model_zoo" / "model_zoo.py"
    text = model_zoo.read_text()
    text = text.replace("import pkg_resources\n", "")
    text = re.sub(
        r"pkg_resources\.resource_filename\(\s*\"detectron2\.model_zoo\",\s*(os\.path\.join\([^)]*\))\s*\)",
        r"os.path.join(os.path.dirname(os.path.abspath(__file__)), \1)",
        text,
    )
    if "pkg_resources" in text:
        raise RuntimeError(f"{model_zoo}: unexpected pkg_resources use left after patching")
    model_zoo.write_text(text)

    setup_py = src / "setup.py"
    text = setup_py.read_text()
    # Install under the canonical distribution name, so `pip show detectron2` finds it, and drop the
    # formatter pin (black==21.4b2) that Detectron2 only uses to pretty-print LazyConfigs.
    text = text.replace('name="pb1-detectron2"', 'name="detectron2"')
    text = text.replace('        "black==21.4b2",\n', "")
    setup_py.write_text(text)

    csrc = src / "detectron2" / "layers" / "csrc"
    csrc.mkdir(parents=True, exist_ok=True)
    (csrc / "vision.cpp").write_text(EMPTY_EXTENSION_SOURCE)


def fetch_patched_sdist(workdir: Path) -> Path:
    """Download and extract the pb1-detectron2 sdist into ``workdir``, patched; returns its folder."""
    pip("download", "--no-deps", "--no-build-isolation", SDIST_REQUIREMENT, "-d", str(workdir))
    archives = sorted(workdir.glob("pb1*detectron2-0.6.tar.gz"))
    if not archives:
        raise RuntimeError(f"pip did not download {SDIST_REQUIREMENT} into {workdir}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(workdir, filter="data")
    src = next(p for p in workdir.iterdir() if p.is_dir() and (p / "setup.py").exists())
    patch_sources(src)
    return src


def install_from_sdist(workdir: Path, constraints: list[str]) -> None:
    src = fetch_patched_sdist(workdir)
    # FORCE_CUDA=0 and no CUDA visible: build the (empty) CPU extension only.
    env_note = "building Detectron2 v0.6 from the patched sdist"
    log(env_note)
    os.environ["FORCE_CUDA"] = "0"
    pip("install", "--no-build-isolation", *constraints, str(src))


PURE_PYTHON_C_MODULE = '''"""Placeholder for Detectron2's C++ ops (absent in this pure-Python build of the v0.6 sources)."""
'''


def build_pure_python_wheel(workdir: Path, wheel_dir: Path) -> None:
    """A ``py3-none-any`` wheel of the patched sdist: no extension module, ``detectron2/_C.py`` instead."""
    src = fetch_patched_sdist(workdir)
    setup_py = src / "setup.py"
    text = setup_py.read_text()
    if "ext_modules=get_extensions()," not in text:
        raise RuntimeError(f"{setup_py}: ext_modules line not found; cannot build a pure-Python wheel")
    setup_py.write_text(text.replace("ext_modules=get_extensions(),", "ext_modules=[],"))
    (src / "detectron2" / "_C.py").write_text(PURE_PYTHON_C_MODULE)
    log(f"building a pure-Python Detectron2 v0.6 wheel into {wheel_dir}")
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(src))


def install_from_upstream(source: str, workdir: Path, constraints: list[str]) -> None:
    if os.path.isdir(source):
        src = Path(source)
    else:
        src = workdir / "detectron2"
        log(f"cloning {source}")
        subprocess.check_call(["git", "clone", "--depth", "1", source, str(src)])
    log(f"building upstream Detectron2 from {src}")
    pip("install", "--no-build-isolation", *constraints, str(src))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel-dir", type=Path, default=None,
                        help="build a pure-Python wheel of the default route into this folder instead of installing")
    args = parser.parse_args()
    if args.wheel_dir is not None:
        args.wheel_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="detectron2-wheel-"))
        try:
            build_pure_python_wheel(workdir, args.wheel_dir.resolve())
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    constraints = []
    lock = Path(__file__).resolve().parent.parent / "requirements" / "lock.txt"
    if lock.exists():
        constraints = ["-c", str(lock)]
    workdir = Path(tempfile.mkdtemp(prefix="detectron2-build-"))
    try:
        source = os.environ.get("DETECTRON2_SRC", "").strip()
        if source:
            install_from_upstream(source, workdir, constraints)
        else:
            install_from_sdist(workdir, constraints)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    subprocess.check_call([sys.executable, "-c", "import detectron2, detectron2.model_zoo; print('detectron2', detectron2.__version__)"])


if __name__ == "__main__":
    main()
