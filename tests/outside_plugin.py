"""Installing a plugin package the way its users would, without touching the suite's environment: a
throwaway virtualenv layered over this one (a ``.pth`` adds this environment's packages), the package
built and installed into it, its own tests run there."""

from __future__ import annotations

import json
import subprocess
import sysconfig
import venv
from pathlib import Path
from typing import Any


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def install(package: Path, tmp_path: Path) -> Path:
    """Build and install ``package`` into a fresh layered virtualenv; returns its python."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
    )
    parent = sysconfig.get_path("purelib")
    Path(site.stdout.strip(), "_cxbridge_parent.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n"
    )
    done = run(
        [
            *(str(python), "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--no-index", str(package)),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return python


def run_tests(python: Path, package: Path) -> str:
    """Run the package's own pytest; returns its summary, failing with its output."""
    tests = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"], package)
    assert tests.returncode == 0, tests.stdout[-4000:]
    return tests.stdout


def plugins(python: Path, cwd: Path) -> dict[str, dict[str, Any]]:
    """What ``cxbridge plugins --json`` lists there, by name."""
    listed = run([str(python), "-m", "cxbridge", "plugins", "--json"], cwd)
    assert listed.returncode == 0, listed.stderr
    return {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
