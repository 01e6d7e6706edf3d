"""A local scale-out stack, for trying it: PostgreSQL and Redis on loopback, and
``openmaas serve --workers 2`` on them (two gateway workers, one engine host).

    make stack                       # or: .venv/bin/python scripts/stack.py [--workers N]

Everything lives in ``.openmaas-stack/`` (or ``--dir``): the PostgreSQL cluster, Redis's
directory, the OpenMaaS data directory (its ``admin-key``). PostgreSQL refuses to run as
root; run as root, the cluster belongs to the user ``postgres`` (or ``nobody``). Ctrl-C
stops the gateways, then Redis and PostgreSQL; the data stays for the next start.
``docs/deploy.md`` explains each part and how to run them on several machines.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PG_USER = "openmaas"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def as_owner(owner: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a command as the cluster's owner (when we are root)."""
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def cluster_owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    sys.exit("running as root and neither the user postgres nor nobody exists")


def require(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        sys.exit(
            f"not on PATH: {', '.join(missing)} (Debian: apt-get install postgresql redis-server)"
        )


def start_postgres(directory: Path, port: int) -> None:
    owner = cluster_owner()
    data = directory / "data"
    directory.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    if not data.exists():
        print(f"PostgreSQL: a new cluster in {data}", flush=True)
        subprocess.run(
            ["initdb", "--pgdata", str(data), "--username", PG_USER, "--auth", "trust",
             "--encoding", "UTF8", "--locale", "C"],
            check=True, cwd=directory, capture_output=True, **as_owner(owner),
        )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} "
    options += f"-c unix_socket_directories={directory}"
    subprocess.run(
        ["pg_ctl", "start", "--wait", "--pgdata", str(data), "--log",
         str(directory / "postgres.log"), "--options", options],
        check=True, cwd=directory, capture_output=True, **as_owner(owner),
    )  # fmt: skip
    # The database itself (ignore "already exists" on later starts).
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", "postgres",
         "-c", "CREATE DATABASE openmaas"],
        cwd=directory, capture_output=True, **as_owner(owner),
    )  # fmt: skip
    print(f"PostgreSQL: 127.0.0.1:{port}, database openmaas", flush=True)


def stop_postgres(directory: Path) -> None:
    subprocess.run(
        ["pg_ctl", "stop", "--wait", "--pgdata", str(directory / "data"), "--mode", "fast"],
        cwd=directory, capture_output=True, **as_owner(cluster_owner()),
    )  # fmt: skip


def start_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    redis = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                print(f"Redis: 127.0.0.1:{port}", flush=True)
                return redis
        time.sleep(0.05)
    redis.kill()
    sys.exit("redis-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".openmaas-stack")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=int(os.environ.get("OPENMAAS_PORT", 8000)))
    args = parser.parse_args()
    require("initdb", "pg_ctl", "psql", "redis-server")
    stack: Path = args.dir.resolve()
    pg_port, redis_port = free_port(), free_port()
    start_postgres(stack / "postgres", pg_port)
    redis = start_redis(stack / "redis", redis_port)
    env = {
        **os.environ,
        "OPENMAAS_HOME": str(stack / "home"),
        "OPENMAAS_PORT": str(args.port),
        "OPENMAAS_DATABASE_URL": f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{pg_port}/openmaas",
        "OPENMAAS_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
    }
    gateway = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "openmaas"), "serve", "--workers", str(args.workers)],
        env=env,
    )
    print(f"OpenMaaS: {args.workers} workers on http://127.0.0.1:{args.port} (Ctrl-C stops)")
    try:
        gateway.wait()
    except KeyboardInterrupt:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait()
    finally:
        redis.terminate()
        redis.wait()
        stop_postgres(stack / "postgres")


if __name__ == "__main__":
    main()
