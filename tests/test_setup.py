"""The README's setup on a stock Debian/Ubuntu Python, which refuses `pip install` outside a virtual
environment (PEP 668): scripts/setup.sh creates the project's .venv and installs diffatlas there, and
.venv/bin/diffatlas runs. Needs Debian's python3 and python3-venv (scripts/test.sh installs them when
run as root) and the package registry; it installs torch and every requirement afresh (about a minute)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PY = Path("/usr/bin/python3")
MARKER = "import os, sysconfig; print(os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"


def _externally_managed() -> bool:
    if not SYSTEM_PY.is_file():
        return False
    out = subprocess.run([str(SYSTEM_PY), "-c", MARKER], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def _copy_project(dst: Path) -> Path:
    """The files git would check out here (tracked, and new ones it does not ignore): a fresh clone's tree."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _clean_env() -> dict[str, str]:
    """The environment of a fresh login: no virtual environment active, the system's PATH, pip's own settings kept."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("HOME", "LANG", "TMPDIR")}
    # no byte-compiling of the ~20,000 installed modules (Python compiles what it imports): a third less time
    return {**keep, "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHON": str(SYSTEM_PY), "PIP_NO_COMPILE": "1"}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("git") is None, reason="needs Linux and git")
@pytest.mark.skipif(not _externally_managed(),
                    reason="no externally managed system Python at /usr/bin/python3 (Debian's python3 package; "
                           "scripts/test.sh installs it when run as root)")
def test_setup_creates_and_uses_a_venv_on_an_externally_managed_python(tmp_path):
    probe = subprocess.run([str(SYSTEM_PY), "-m", "venv", str(tmp_path / "probe")], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("Debian's python3-venv is not installed (scripts/test.sh installs it when run as root)")
    proj = _copy_project(tmp_path / "diffatlas")
    env = _clean_env()
    try:
        # the premise: this Python refuses to install outside a virtual environment
        refused = subprocess.run([str(SYSTEM_PY), "-m", "pip", "install", "--dry-run", "--no-index", "diffatlas"],
                                 cwd=proj, env=env, capture_output=True, text=True)
        assert refused.returncode != 0
        assert "externally-managed-environment" in refused.stderr or "No module named pip" in refused.stderr
        setup = subprocess.run(["bash", "scripts/setup.sh"], cwd=proj, env=env, capture_output=True, text=True,
                               timeout=1200)
        assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-3000:]
        assert "run .venv/bin/diffatlas" in setup.stdout
        py, cli = proj / ".venv" / "bin" / "python", proj / ".venv" / "bin" / "diffatlas"
        where = subprocess.run([str(py), "-c", "import diffatlas, sys; print(diffatlas.__file__); print(sys.base_prefix)"],
                               env=env, capture_output=True, text=True, check=True).stdout.split()
        assert where == [str(proj / "src" / "diffatlas" / "__init__.py"), "/usr"]
        listed = subprocess.run([str(cli), "list"], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
        assert listed.returncode == 0 and "ddpm" in listed.stdout, listed.stderr[-2000:]
        # setup again: the environment is reused, nothing is reinstalled
        again = subprocess.run(["bash", "scripts/setup.sh"], cwd=proj, env=env, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0 and "creating" not in again.stdout and "installing torch" not in again.stdout
    finally:
        shutil.rmtree(proj / ".venv", ignore_errors=True)  # about 1.3 GB
