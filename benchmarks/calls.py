"""Python function calls per priced request: OpenMaaS under cProfile, counted over requests
only (not start-up), load-independent.

``openmaas serve`` (one process, settings from the environment as ``gateway.py`` sets
them) serves the priced model of ``gateway.py``'s catalog from its zero-latency upstream;
this script sends ``--warmup`` chat completions one at a time, then starts the server's
profiler (SIGUSR1), sends ``--requests`` more, stops it (SIGUSR1 again: the stats are
written) and divides. The profile is the server's main thread, where the request path
runs (the SQLite writer's thread and an exporter's are not in it); the change feed's polls
and other background work in the window are counted too (a few calls per request at
these rates).

    .venv/bin/python benchmarks/calls.py                    # json, the defaults
    .venv/bin/python benchmarks/calls.py --traces console   # with traces on
    .venv/bin/python benchmarks/calls.py --stream

``docs/benchmarks.md`` has the results.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

from gateway import OM_PRICED, SCRIPT, python, seeded_home
from processes import free_port, start, stop, tail, wait_http
from rawhttp import MESSAGES


def serve_profiled(profile: str) -> None:
    """``openmaas serve`` whose profiler SIGUSR1 starts, then stops and writes."""
    import cProfile

    from openmaas.server.runner import serve
    from openmaas.settings import Settings

    profiler = cProfile.Profile()
    toggles = [0]

    def toggle(signum: int, frame: object) -> None:
        toggles[0] += 1
        if toggles[0] == 1:
            profiler.enable()
        else:
            profiler.disable()
            profiler.dump_stats(profile)

    signal.signal(signal.SIGUSR1, toggle)
    serve(Settings())


def send(port: int, key: str, count: int, stream: bool) -> None:
    """``count`` chat completions one after another on one keep-alive connection."""
    payload: dict[str, object] = {"model": OM_PRICED, "messages": MESSAGES, "max_tokens": 16}
    if stream:
        payload["stream"] = True
    body = json.dumps(payload).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(count):
            connection.request("POST", "/v1/chat/completions", body, headers)
            reply = connection.getresponse()
            data = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:300]!r}")
    finally:
        connection.close()


def report(profile: Path, requests: int) -> None:
    stats = pstats.Stats(str(profile))
    total = builtins = ours = otel = 0
    for (filename, _line, _name), (_cc, nc, _tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += nc
        if filename == "~":
            builtins += nc
        elif "/openmaas/" in filename:
            ours += nc
        elif "/opentelemetry/" in filename:
            otel += nc
    print(f"Python function calls per request over {requests} requests: {total / requests:,.1f}")
    print(
        f"  of them built-ins {builtins / requests:,.0f}, openmaas {ours / requests:,.0f}, ", end=""
    )
    print(f"opentelemetry {otel / requests:,.0f}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["_serve"]:
        serve_profiled(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--stream", action="store_true", help="streamed, not json")
    parser.add_argument(
        "--traces", default="off", help="OPENMAAS_TRACES (console: spans to the server's log)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="openmaas-calls-"))
    children = []
    try:
        up_port = free_port()
        upstream = start("upstream", python(SCRIPT, "_upstream", str(up_port)), workdir, None, {})
        children.append(upstream)
        upstream_url = f"http://127.0.0.1:{up_port}/v1"
        wait_http(upstream, f"{upstream_url}/models", 30)
        port = free_port()
        extra = {
            "OPENMAAS_PORT": str(port),
            "OPENMAAS_WORKERS": "1",
            "OPENMAAS_TRACES": args.traces,
        }
        env, keys = seeded_home(workdir, workdir / "openmaas", upstream_url, extra)
        key = keys["plain"]
        profile = workdir / "calls.prof"
        server = start("openmaas", python(__file__, "_serve", str(profile)), workdir, None, env)
        children.append(server)
        wait_http(server, f"http://127.0.0.1:{port}/readyz", 90)
        mode = "streamed" if args.stream else "json"
        print(f"traces {args.traces}; {mode}; warm-up {args.warmup}", flush=True)
        send(port, key, args.warmup, args.stream)
        os.kill(server.proc.pid, signal.SIGUSR1)
        send(port, key, args.requests, args.stream)
        os.kill(server.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not profile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the dump finishes writing
        report(profile, args.requests)
        return 0
    except RuntimeError as exc:
        print(exc)
        for child in children:
            print(f"--- {child.log.name} ---\n{tail(child.log)}")
        return 1
    finally:
        for child in reversed(children):
            stop(child)
        if args.keep:
            print(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
