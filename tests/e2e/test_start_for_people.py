"""What a person sees when the server starts: the admin secret only on a terminal (once),
never in a log file; a "ready at" line; start-up errors as one readable line, with nothing
set up or printed before them."""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.e2e.live import LiveServer, free_port
from tests.support.waiting import wait_until

FAKE = {"fake-echo": {"text": "one two three"}}


def test_first_start_to_files_writes_no_secret_and_says_where_it_is(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "home", embedded_models="false", fake_models=FAKE).start()
    try:
        key = server.admin_key
        secret = key.split(".")[1]
        ready = f"OpenMaaS ready at {server.base_url}"
        wait_until(lambda: ready in server.stderr, what="the ready line")
        assert "Loading models fake-echo ..." in server.stderr
        assert str(server.home.resolve() / "admin-key") in server.stdout
        assert f"curl {server.base_url}/v1/chat/completions" in server.stdout
        answer = httpx.get(
            f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200
    finally:
        assert server.stop() == 0
    assert secret not in server.stdout and secret not in server.stderr
    assert server.stderr.count(ready) == 1


def test_first_start_on_a_terminal_shows_the_secret_exactly_once(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "home", embedded_models="false", fake_models=FAKE)
    leader, follower = pty.openpty()
    seen: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process = subprocess.Popen(
        [sys.executable, "-m", "openmaas", "serve"],
        env=server.env,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    ready = f"OpenMaaS ready at {server.base_url}"
    try:
        # The banner quotes the ready line ("once the server says ..."); wait for the line itself.
        wait_until(
            lambda: ready in b"".join(seen).decode().splitlines(), what="the ready line", timeout=60
        )
        shown = b"".join(seen).decode()
        assert shown.count(server.admin_key) == 1, shown
    finally:
        process.terminate()
        status = process.wait(60)
        reader.join(10)
        os.close(leader)
    assert status == 0, b"".join(seen).decode()[-3000:]


def _start(home: Path, port: int, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OPENMAAS_HOME": str(home),
        "OPENMAAS_PORT": str(port),
        "OPENMAAS_EMBEDDED_MODELS": "false",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "openmaas", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_busy_port_is_one_line_and_nothing_is_set_up_or_printed_before(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = _start(tmp_path / "home", port)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "admin-key").exists()


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = _start(tmp_path / "home", free_port(), OPENMAAS_WORKERS="many")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "OPENMAAS_WORKERS='many'" in result.stderr and "Traceback" not in result.stderr
