"""The README followed to the letter: its walked blocks run in order, verbatim, on a fresh
data directory, and fail this test when one does not work as written.

A block is walked when an HTML comment ``<!-- walk: NAME -->`` stands just before it. The
test builds what a fresh clone has after ``make run`` (``.venv`` and ``examples/`` in a
directory of its own, the data directory ``./.openmaas``), starts the server as ``make run``
does (``openmaas serve``, default settings, on a free port) and runs each block from that
directory: shell blocks with ``bash -eu -o pipefail``, Python blocks with ``.venv/bin/python``.
The one change made to a command is the port: ``127.0.0.1:8000`` becomes the test server's.
After the last block the first examples run again: what the README sets up on the way
(prices, a catalog) must not break them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.live import LiveServer
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
WALK = re.compile(r"^<!-- walk: ([\w-]+) -->\n```(\w*)\n(.*?)^```", re.M | re.S)
README_PORT = "127.0.0.1:8000"


@dataclass(frozen=True)
class Block:
    name: str
    language: str
    text: str


def walked_blocks(readme: str) -> list[Block]:
    return [Block(name, lang, text) for name, lang, text in WALK.findall(readme)]


def test_the_readme_marks_the_blocks_a_new_user_runs_in_order() -> None:
    names = [block.name for block in walked_blocks((ROOT / "README.md").read_text())]
    assert names == ["call", "sdk", "keys", "prices", "catalog"]


@pytest.fixture()
def clone(tmp_path: Path) -> Path:
    """A directory laid out like a fresh clone after ``make run``'s install."""
    here = tmp_path / "clone"
    here.mkdir()
    (here / ".venv").symlink_to(Path(sys.prefix))
    (here / "examples").symlink_to(ROOT / "examples")
    return here


class Walker:
    def __init__(self, clone: Path, server: LiveServer) -> None:
        self.clone = clone
        self.server = server
        # What a user's shell has: no OPENMAAS_* (the data directory is ./.openmaas); the
        # code under test is this checkout's, wherever the venv's editable install points.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OPENMAAS_")}
        self.env["PYTHONPATH"] = str(ROOT / "src")

    def run(self, block: Block) -> str:
        text = block.text.replace(README_PORT, f"127.0.0.1:{self.server.port}")
        if block.language == "python":
            command = [".venv/bin/python", "-c", text]
        else:
            command = ["bash", "-eu", "-o", "pipefail", "-c", text]
        result = subprocess.run(
            command, cwd=self.clone, env=self.env, capture_output=True, text=True, timeout=120
        )
        output = (result.stdout + result.stderr)[:3000]
        assert result.returncode == 0, f"README block '{block.name}' failed:\n{output}"
        assert '"error"' not in result.stdout, f"README block '{block.name}':\n{output}"
        return result.stdout


def test_the_readme_walked_in_order_works_as_written(clone: Path) -> None:
    blocks = {b.name: b for b in walked_blocks((ROOT / "README.md").read_text())}
    server = LiveServer(clone / ".openmaas").start()
    try:
        walker = Walker(clone, server)

        called = walker.run(blocks["call"])
        assert '"chat.completion"' in called and '"embedding"' in called

        assert walker.run(blocks["sdk"]).splitlines()[-1] == "384"

        keys = walker.run(blocks["keys"])
        assert "ci-bot" in keys and '"chat.completion"' in keys
        assert "smollm2-135m-instruct" in keys.split('"chat.completion"')[-1]  # usage
        listing = server.cli("keys", "list").stdout
        assert "revoked" in listing.lower()

        prices = walker.run(blocks["prices"])
        assert "100.000000" in prices

        walker.run(blocks["catalog"])
        headers = {"Authorization": f"Bearer {server.admin_key}"}

        def assistant_listed() -> bool:
            models = httpx.get(f"{server.base_url}/v1/models", headers=headers).json()
            return "assistant" in {m["id"] for m in models["data"]}

        wait_until(assistant_listed, timeout=60, what="the sample catalog's model")

        # What the README set up on the way must not break its first examples.
        called = walker.run(blocks["call"])
        assert '"chat.completion"' in called and '"embedding"' in called
        assert walker.run(blocks["sdk"]).splitlines()[-1] == "384"
    finally:
        server.stop()
