"""The benchmark and the GPU check are programs under tools/ over the library, not part of it: their
entry scripts run from anywhere without PYTHONPATH, and the library neither imports them nor changes
the environment when imported."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _clean_env() -> dict:
    """The environment of a fresh shell: no PYTHONPATH, no HF_HUB_OFFLINE (conftest sets it)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE")}


@pytest.mark.parametrize("tool", ["benchmark", "gpu_check"])
def test_entry_script_runs_from_another_folder_without_pythonpath(tool, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / f"{tool}.py"), "--help"], cwd=tmp_path,
                          env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"usage: python tools/{tool}.py")


def test_importing_the_library_loads_no_tool_and_leaves_the_environment_alone():
    code = (
        "import importlib, os, pkgutil, sys\n"
        "import denseclip\n"
        "modules = [m.name for m in pkgutil.walk_packages(denseclip.__path__, 'denseclip.')]\n"
        "for name in modules:\n"
        "    importlib.import_module(name)\n"
        "tools = sorted(m for m in sys.modules if m.split('.')[0] in ('benchmarking', 'gpu_checking'))\n"
        "print(len(modules), os.environ.get('HF_HUB_OFFLINE'), tools)\n"
    )
    env = dict(_clean_env(), PYTHONPATH=str(REPO_ROOT / "projects" / "DenseCLIP"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, offline, tools = proc.stdout.split(maxsplit=2)
    assert int(count) > 20  # every module of the package was imported
    assert offline == "None" and tools.strip() == "[]"
    package = REPO_ROOT / "projects" / "DenseCLIP" / "denseclip"
    assert not (package / "benchmark").exists() and not (package / "gpu_check").exists()
