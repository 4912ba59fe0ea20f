"""scripts/setup.sh keeps the Detectron2 the user chose (DETECTRON2_SRC) on later runs.

Runs the script on a copy of the files it fingerprints, with a fake .venv whose "python" only
records how it is called: nothing is installed or built.
"""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FINGERPRINTED = ("requirements/lock.txt", "requirements/web.txt", "requirements/lvis.txt", "setup.py", "scripts/install_detectron2.py")

FAKE_PYTHON = """#!/usr/bin/env bash
echo "DETECTRON2_SRC=${DETECTRON2_SRC-<unset>} $*" >> "$(dirname "$0")/../calls.log"
if [ "${1:-}" = "-c" ]; then echo "detectron2 FAKE at /fake/detectron2"; fi
exit 0
"""


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    for rel in (*FINGERPRINTED, "scripts/setup.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, tmp_path / rel)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def fingerprint(root: Path, source: str) -> str:
    digest = hashlib.sha256(b"".join((root / rel).read_bytes() for rel in FINGERPRINTED)).hexdigest()
    return f"{digest} {source}"


def run_setup(root: Path, detectron2_src: Optional[str]) -> subprocess.CompletedProcess:
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if k != "DETECTRON2_SRC"}
    if detectron2_src is not None:
        env["DETECTRON2_SRC"] = detectron2_src
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def calls(root: Path) -> List[str]:
    log = root / ".venv" / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def installs(root: Path) -> List[str]:
    return [c for c in calls(root) if "install_detectron2.py" in c]


def test_setup_keeps_the_chosen_upstream_detectron2(repo_copy):
    upstream = "/opt/src/detectron2"
    run_setup(repo_copy, upstream)
    assert installs(repo_copy) == [f"DETECTRON2_SRC={upstream} scripts/install_detectron2.py"]
    assert (repo_copy / ".venv" / ".denseclip-detectron2-src").read_text().strip() == upstream
    assert (repo_copy / ".venv" / ".denseclip-setup").read_text().strip() == fingerprint(repo_copy, upstream)

    # scripts/test.sh / quickstart.sh run setup.sh without the variable: nothing is rebuilt, and
    # the Detectron2 in use is named (it used to uninstall the upstream one and build v0.6).
    (repo_copy / ".venv" / "calls.log").unlink()
    proc = run_setup(repo_copy, None)
    assert installs(repo_copy) == []
    assert "environment is up to date" in proc.stdout
    assert "detectron2 FAKE at /fake/detectron2" in proc.stdout and f"DETECTRON2_SRC={upstream}" in proc.stdout

    # DETECTRON2_SRC= (set, empty) goes back to the v0.6 sources, and that is remembered too.
    proc = run_setup(repo_copy, "")
    assert installs(repo_copy) == ["DETECTRON2_SRC= scripts/install_detectron2.py"]
    assert "Detectron2 v0.6 from the PyPI sources" in proc.stdout
    (repo_copy / ".venv" / "calls.log").unlink()
    assert "environment is up to date" in run_setup(repo_copy, None).stdout
    assert installs(repo_copy) == []


def test_setup_before_the_choice_file_reads_the_stamp(repo_copy):
    """An environment set up with DETECTRON2_SRC before the choice was stored: the stamp holds it."""
    upstream = "https://github.com/facebookresearch/detectron2.git"
    (repo_copy / ".venv" / ".denseclip-setup").write_text(fingerprint(repo_copy, upstream) + "\n")
    proc = run_setup(repo_copy, None)
    assert "environment is up to date" in proc.stdout and upstream in proc.stdout
    assert installs(repo_copy) == []


def test_setup_runs_the_detectron2_installers_pip_quietly(repo_copy):
    """pip printed ~70 "Requirement already satisfied" lines while Detectron2 was installed."""
    python = repo_copy / ".venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON.replace("DETECTRON2_SRC=${DETECTRON2_SRC-<unset>}", "PIP_QUIET=${PIP_QUIET-<unset>}"))
    run_setup(repo_copy, "")
    assert [c for c in calls(repo_copy) if "install_detectron2.py" in c] == ["PIP_QUIET=1 scripts/install_detectron2.py"]
    pip_calls = [c for c in calls(repo_copy) if " -m pip install" in c]
    assert pip_calls and all(" -q " in c for c in pip_calls)
