#!/usr/bin/env python
"""Install Detectron2 into the current Python environment.

Two routes:
  * default: the PyPI sdist ``pb1-detectron2==0.6`` (FAIR's v0.6 Python sources published without
    the C++ sources). We add a ``detectron2._C`` extension without ops (it only answers
    ``collect_env``'s questions), apply the small named patches of ``SDIST_PATCHES`` (packaging
    defects of the sdist, and v0.6 code broken by current Python / PyTorch / Pillow / NumPy /
    setuptools), and build it with ``--no-build-isolation``. Without the C++ ops, COCO evaluation
    uses pycocotools' Python COCOeval and NMS/ROIAlign come from torchvision. Detectron2 v0.6's own
    test suite then fails only where it needs the C++ ops, network, COCO data or shapely: the list
    of those tests, with reasons, is in docs/TROUBLESHOOTING.md ("Detectron2's own tests").
  * ``DETECTRON2_SRC=<local checkout or git URL>``: an upstream Detectron2 source, installed as is
    (this compiles its C++/CUDA ops, so it needs a compiler, and nvcc for CUDA ops). None of the
    patches below is applied to it.

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
from dataclasses import dataclass
from pathlib import Path

SDIST_REQUIREMENT = "pb1-detectron2==0.6"

# A CPython extension module without Detectron2's ops: setup.py insists on compiling
# detectron2/layers/csrc, and Detectron2 imports ``detectron2._C`` lazily only for the ops we do not
# use on this route. It does define the three build-information functions of upstream's vision.cpp,
# because ``detectron2.utils.collect_env.collect_env_info`` (called by ``default_setup``) reads them:
# without ``get_compiler_version`` it raised AttributeError, so every script calling
# ``default_setup`` crashed (upstream tests ``test_setup_config``, ``TestCollectEnv``).
EMPTY_EXTENSION_SOURCE = """\
// Detectron2's C++ extension without its ops, which the pb1-detectron2 sdist does not ship.
// Only the build information that detectron2.utils.collect_env reads is provided.
#include <Python.h>

static PyObject* get_compiler_version(PyObject*, PyObject*) {
#if defined(__clang__)
  return PyUnicode_FromFormat("clang %d.%d", __clang_major__, __clang_minor__);
#elif defined(__GNUC__)
  return PyUnicode_FromFormat("GCC %d.%d", __GNUC__, __GNUC_MINOR__);
#elif defined(_MSC_VER)
  return PyUnicode_FromFormat("MSVC %d", _MSC_FULL_VER);
#else
  return PyUnicode_FromString("unknown");
#endif
}

static PyObject* get_cuda_version(PyObject*, PyObject*) {
  return PyUnicode_FromString("not available (detectron2 built without its C++/CUDA ops)");
}

static PyObject* has_cuda(PyObject*, PyObject*) { Py_RETURN_FALSE; }

static PyMethodDef methods[] = {
    {"get_compiler_version", get_compiler_version, METH_NOARGS, "Compiler that built this module."},
    {"get_cuda_version", get_cuda_version, METH_NOARGS, "CUDA version of the ops: none here."},
    {"has_cuda", has_cuda, METH_NOARGS, "Whether CUDA ops were built: False."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
"""

# (file glob, regex, replacement): each fix keeps v0.6 behaviour on current dependency versions.
SOURCE_FIXES = [
    # Pillow >= 10 removed the Image.LINEAR alias of Image.BILINEAR.
    ("detectron2/**/*.py", r"\bImage\.LINEAR\b", "Image.BILINEAR"),
    # NumPy >= 1.24 removed the aliases of the builtin scalar types.
    ("detectron2/**/*.py", r"\bnp\.(int|float|str|bool)\b(?!_)", r"\1"),
]


@dataclass(frozen=True)
class SourcePatch:
    """Replace ``old`` by ``new`` in one file of the sdist (``count`` occurrences, exactly)."""

    name: str
    path: str
    old: str
    new: str
    count: int = 1


# Each patch makes the installed Detectron2 behave like upstream v0.6 does on the versions it was
# released for; the comment names what failed without it (upstream test names are those of the
# v0.6 tag's tests/ folder).
SDIST_PATCHES = [
    # The sdist holds the model-zoo configs under detectron2/model_zoo/configs, but setup.py globs a
    # top-level configs/ folder that only a git checkout has, so none was installed and
    # model_zoo.get_config_file() said "... not available in Model Zoo!" (testOmegaConf, the
    # test_model_e2e and test_model_zoo tests). Glob them where the sdist has them instead.
    SourcePatch(
        "model-zoo-configs",
        "setup.py",
        'config_paths = glob.glob("configs/**/*.yaml", recursive=True) + glob.glob(\n'
        '        "configs/**/*.py", recursive=True\n'
        "    )",
        "package_root = path.join(path.dirname(path.realpath(__file__)), \"detectron2\", \"model_zoo\")\n"
        '    config_paths = glob.glob("configs/**/*.yaml", root_dir=package_root, recursive=True) + glob.glob(\n'
        '        "configs/**/*.py", root_dir=package_root, recursive=True\n'
        "    )",
    ),
    # Install under the canonical distribution name, so that `pip show detectron2` finds it.
    SourcePatch("distribution-name", "setup.py", 'name="pb1-detectron2"', 'name="detectron2"'),
    # black==21.4b2 does not import with click >= 8.1, so the installer dropped the requirement and
    # LazyConfig.to_py raised ModuleNotFoundError (test_to_py). Require a current black instead,
    # pinned by requirements/lock.txt.
    SourcePatch("black-unpinned", "setup.py", '"black==21.4b2",', '"black",'),
    # setuptools >= 82 no longer ships pkg_resources; model_zoo only needs a path inside the package.
    SourcePatch(
        "model-zoo-without-pkg_resources",
        "detectron2/model_zoo/model_zoo.py",
        "import pkg_resources\n",
        "",
    ),
    SourcePatch(
        "model-zoo-without-pkg_resources",
        "detectron2/model_zoo/model_zoo.py",
        'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
        'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)',
    ),
    # caffe2 left PyTorch (2.0), and detectron2/export/__init__.py imported the caffe2 exporter
    # (.api) unconditionally, so `import detectron2.export` failed, and with it
    # detectron2.utils.analysis (FlopCountAnalysis): 6 test files did not import
    # (test_export_torchscript, test_model_analysis, test_backbone, test_roi_heads, test_rpn,
    # test_instances). Import the caffe2 exporter only where caffe2 exists, as upstream does since.
    SourcePatch(
        "export-without-caffe2",
        "detectron2/export/__init__.py",
        "from .api import *\n",
        "try:  # the Caffe2 exporter needs caffe2, which PyTorch >= 2.0 no longer ships\n"
        "    from caffe2.proto import caffe2_pb2 as _caffe2_pb2  # noqa: F401\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    from .api import *\n",
    ),
    # random.sample() no longer accepts a set (Python 3.11): the first sample that a dataset
    # mapper skipped by returning None raised "TypeError: Population must be a sequence" instead
    # of mapping another random sample (test_map_style).
    SourcePatch(
        "map-dataset-retry-py311",
        "detectron2/data/common.py",
        "self._rng.sample(self._fallback_candidates, k=1)[0]",
        "self._rng.sample(list(self._fallback_candidates), k=1)[0]",
    ),
    # PyTorch 2's schedulers (StepLR, MultiStepLR, ...) derive from LRScheduler, no longer from
    # _LRScheduler (now a subclass kept for old code), so the LRScheduler hook neither saved nor
    # restored them and a resumed run restarted its learning-rate schedule (test_checkpoint_resume).
    SourcePatch(
        "lr-scheduler-hook-torch2",
        "detectron2/engine/hooks.py",
        "isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
        "isinstance(self.scheduler, getattr(torch.optim.lr_scheduler, \"LRScheduler\", torch.optim.lr_scheduler._LRScheduler))",
        count=2,
    ),
]


def log(message: str) -> None:
    print(f"[install_detectron2] {message}", flush=True)


def pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def apply_patch(src: Path, patch: SourcePatch) -> None:
    """Apply one :class:`SourcePatch`; a file already patched is left as is, a file that has neither
    the old nor the new text means another sdist than the one the patches were written for."""
    path = src / patch.path
    text = path.read_text()
    found = text.count(patch.old)
    if (patch.new and patch.new in text) or (not patch.new and found == 0):
        return  # already applied
    if found == patch.count:
        path.write_text(text.replace(patch.old, patch.new))
        log(f"patched {patch.path} ({patch.name})")
    else:
        raise RuntimeError(
            f"{path}: patch '{patch.name}' expects {patch.count} occurrence(s) of {patch.old!r}, found {found}; "
            f"is this the {SDIST_REQUIREMENT} sdist?"
        )


def patch_sources(src: Path) -> None:
    """Apply the compatibility fixes to an extracted pb1-detectron2 sdist, idempotently."""
    for pattern, regex, replacement in SOURCE_FIXES:
        for path in src.glob(pattern):
            text = path.read_text()
            new_text = re.sub(regex, replacement, text)
            if new_text != text:
                path.write_text(new_text)
                log(f"patched {path.relative_to(src)}")
    for patch in SDIST_PATCHES:
        apply_patch(src, patch)
    model_zoo = src / "detectron2" / "model_zoo" / "model_zoo.py"
    if "pkg_resources" in model_zoo.read_text():
        raise RuntimeError(f"{model_zoo}: unexpected pkg_resources use left after patching")

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


# The same three build-information functions as EMPTY_EXTENSION_SOURCE, so that collect_env_info
# and default_setup work with the wheel too.
PURE_PYTHON_C_MODULE = '''"""Placeholder for Detectron2's C++ ops (absent in this pure-Python build of the v0.6 sources)."""


def get_compiler_version() -> str:
    return "none (pure-Python build without Detectron2's C++ ops)"


def get_cuda_version() -> str:
    return "not available (detectron2 built without its C++/CUDA ops)"


def has_cuda() -> bool:
    return False
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
    # Smoke check of what the patches fix (tests/test_detectron2_install.py checks them in depth).
    check = (
        "import detectron2, detectron2.export; from detectron2 import model_zoo; "
        "model_zoo.get_config_file('COCO-Detection/retinanet_R_50_FPN_1x.yaml'); "
        "print('detectron2', detectron2.__version__)"
    )
    subprocess.check_call([sys.executable, "-c", check])


if __name__ == "__main__":
    main()
