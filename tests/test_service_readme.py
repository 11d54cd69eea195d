"""The README's "Run the service" block runs as written: serve on the example tenant, post an event
with curl, see it delivered, stop with SIGTERM."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from tests.service_support import free_port

ROOT = Path(__file__).parent.parent


def test_the_readme_service_blocks_run(tmp_path: Path) -> None:
    """The first block starts the service, the second (run as written) posts and watches."""
    section = (ROOT / "README.md").read_text().split("## Run the service", 1)[1]
    serve, tour = re.findall(r"```sh\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACME_", "CXBRIDGE_"))}
    env["CXBRIDGE_PORT"] = str(port)
    command = shlex.split(serve, comments=True)
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        result = subprocess.run(
            ["bash", "-c", "set -e\n" + tour.replace("8787", str(port))],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"duplicate":false' in result.stdout
    assert '"status":"delivered"' in result.stdout, result.stdout + result.stderr
    assert code == 0, (tmp_path / "serve.log").read_text()


def test_the_documented_serve_options_exist() -> None:
    from click.testing import CliRunner

    from cxbridge.cli import cli

    usage = (ROOT / "docs" / "service.md").read_text().split("```text\n", 1)[1].split("```")[0]
    help_text = CliRunner().invoke(cli, ["serve", "--help"]).output
    for option in re.findall(r"--[a-z-]+|-c\b", usage):
        assert option in help_text, option
