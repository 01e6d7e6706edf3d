"""The npm clients the end-to-end tests run against a live server (Claude Code, Codex CLI):
installed at the exact version ``scripts/<name>/package-lock.json`` pins, into
``.cache/npm/<name>``, by ``scripts/install-npm-client.sh`` (``make test`` runs it through
``scripts/test-services.sh``; :func:`executable` runs it when that has not happened).
Without npm the tests are skipped, except under CI (``CI`` set), where they fail; npm that
cannot install one (no registry) fails them, saying why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install-npm-client.sh"
INSTALL_TIMEOUT_S = 600
CLOSED_PORT_PROXY = "http://127.0.0.1:9"  # discard: nothing listens there
OFFLINE = {  # anything but loopback goes to a closed port, whatever a later version tries
    "HTTPS_PROXY": CLOSED_PORT_PROXY,
    "HTTP_PROXY": CLOSED_PORT_PROXY,
    "NO_PROXY": "127.0.0.1,localhost",
}


def pinned(name: str) -> tuple[str, str]:
    """The package ``scripts/<name>/`` pins and its version."""
    manifest = json.loads((ROOT / "scripts" / name / "package.json").read_text())
    [(package, version)] = manifest["dependencies"].items()
    return str(package), str(version)


def executable(name: str) -> Path:
    """The program of the pinned client ``name``, installed first when it is not."""
    package, version = pinned(name)
    if shutil.which("npm") is None:
        reason = "npm is not installed (bash scripts/test-services.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; under CI the {package} tests must run", pytrace=False)
        pytest.skip(reason)
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), name],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{package} {version} could not be installed from the npm registry "
            f"({INSTALL_SCRIPT.relative_to(ROOT)} {name}):\n{done.stderr[-4000:]}",
            pytrace=False,
        )
    return Path(done.stdout.strip().splitlines()[-1])
