"""The virtualenvs of the Zhipu SDKs under ``<repo>/.venv-sdk/`` (built once, reused
afterwards): zhipuai 2.1.5 pins PyJWT <2.9 and zai-sdk needs >=2.9, so each has its own, and
a test runs its client there as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK_VENVS = ROOT / ".venv-sdk"
# zhipuai imports sniffio without declaring it (newer httpx no longer brings it along).
SDK_PACKAGES: dict[str, list[str]] = {
    "zhipuai": ["zhipuai==2.1.5.20250825", "sniffio"],
    "zai": ["zai-sdk==0.2.3"],
}
PIP_TIMEOUT = 900


def build_sdk_venv(name: str) -> Path:
    """``.venv-sdk/<name>`` with its SDK installed (its python); a marker names what was
    installed. Raises ``subprocess.SubprocessError`` or ``OSError`` when pip cannot."""
    SDK_VENVS.mkdir(exist_ok=True)
    venv = SDK_VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    wanted = " ".join(SDK_PACKAGES[name])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *SDK_PACKAGES[name],
        ],
        check=True,
        timeout=PIP_TIMEOUT,
        capture_output=True,
    )
    marker.write_text(wanted)
    return python
