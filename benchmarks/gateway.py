"""Gateway overhead: OpenMaaS and LiteLLM Proxy against calling the upstream directly.

One zero-latency OpenAI-compatible upstream (a raw asyncio HTTP server answering a canned
completion, or a canned short SSE stream with a usage chunk) runs in its own process. The
same client (a raw asyncio HTTP/1.1 keep-alive client in this process, one connection per
concurrent request) sends the same chat-completion payload, non-streamed and streamed, at
each concurrency, to:

- ``direct``: the upstream itself;
- ``om-meter``: OpenMaaS with auth and usage records, no price (metering only);
- ``om-bill``: OpenMaaS with a price and a prepaid balance (a hold per request, settled
  with the usage record);
- ``om-bill-tier``: the same, and the organization on a rate-limit tier (RPM, TPM and
  concurrency counted, never refusing at these rates);
- ``litellm``: LiteLLM Proxy (``litellm[proxy]``, its own virtualenv ``.venv-litellm/``,
  created on demand), master-key auth, one worker, no database.

Every phase is ``--warmup`` seconds then ``--duration`` seconds measured; each round runs
every (mode, concurrency) with the targets in rotated order, and the table shows the median
over rounds. "Added" latency is the target's percentile minus the direct percentile of the
same round, mode and concurrency. On a machine with 2 or more CPUs the gateway under test
is pinned to CPU 1 and the client and upstream to CPU 0 (``--no-pin`` turns that off), so a
gateway process has one core to itself; "req/CPU-s" is requests divided by the CPU time the
gateway process (all its threads and children) used in the measured window.

    .venv/bin/python benchmarks/gateway.py            # full run, ~7 minutes
    .venv/bin/python benchmarks/gateway.py --quick --no-litellm

``docs/benchmarks.md`` ("Gateway overhead") has results and how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rawhttp import (  # the benchmark's upstream and client, beside this script
    PhaseResult,
    Target,
    check_answer,
    run_phase,
    run_upstream,
    use_uvloop,
)

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_MODEL = "bench-upstream"
UPSTREAM_KEY = "sk-upstream-bench"
LITELLM_MASTER_KEY = "sk-litellm-bench-master"
LITELLM_MODEL = "bench"
OM_FREE = "bench-free"  # no price: metering only
OM_PRICED = "bench-priced"  # a price: hold and settlement
WORDS = ["Hello", " there", ",", " how", " are", " you", "?"]
CLK_TCK = os.sysconf("SC_CLK_TCK")

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello and ask how I am, in a few words."},
]


# -- OpenMaaS: the real app, a catalog relaying to the upstream ------------------------------
def run_openmaas(home: Path, port: int, upstream: str, profile: str | None) -> None:
    import uvicorn

    from openmaas.accounts.admin import NewOrganization
    from openmaas.catalog.served import ModelCatalog, ServedModel
    from openmaas.core.ledger_events import TopUp
    from openmaas.core.prices import ModelPrice
    from openmaas.core.tiers import Limits, Tier
    from openmaas.engines.upstream.openai_http import OpenAIHttpConfig, OpenAIHttpEngine
    from openmaas.platform import open_platform
    from openmaas.routing.router import Deployment, RoutedEngine
    from openmaas.server.app import create_app
    from openmaas.server.logs import configure_logging
    from openmaas.settings import Settings
    from openmaas.store.billing import set_price, set_tier, update_org
    from openmaas.store.database import open_database
    from openmaas.store.ledger import LedgerStore

    settings = Settings(home=home, port=port, embedded_models=False, log_level="INFO")

    async def seed() -> dict[str, str]:
        async with open_platform(settings) as platform:
            admin = platform.accounts_admin("benchmark")
            plain = await admin.create_org(NewOrganization(name="bench"))
            tiered = await admin.create_org(NewOrganization(name="bench-tier"))
            keys = {
                "plain": (await admin.issue_key(plain.id, "bench")).token,
                "tiered": (await admin.issue_key(tiered.id, "bench")).token,
            }
        database = open_database(settings.resolved_database_url)
        async with database.begin() as conn:  # 1 CNY per 1M input tokens, 2 per 1M output
            await set_price(conn, ModelPrice(OM_PRICED, 1_000_000, 500_000, 2_000_000))
            huge = 10**9
            await set_tier(conn, Tier("bench", Limits(rpm=huge, tpm=huge, concurrency=10_000)))
            await update_org(conn, tiered.id, tier="bench")
        ledger = LedgerStore(database, lambda: 0)
        for n, org in enumerate((plain, tiered)):  # 1,000,000 CNY each: never runs out here
            await ledger.execute(TopUp(f"bench-topup-{n}", org.id, 10**12))
        await database.dispose()
        return keys

    keys = asyncio.run(seed())
    (home / "keys.json").write_text(json.dumps(keys))

    def routed(name: str) -> ServedModel:
        engine = OpenAIHttpEngine(
            name,
            OpenAIHttpConfig(
                base_url=upstream,
                upstream_model=UPSTREAM_MODEL,
                api_key=UPSTREAM_KEY,
                slots=256,  # beyond the benchmark's concurrency: nothing waits in the engine
                deployment="bench-upstream",
            ),
        )
        router = RoutedEngine(name, [Deployment("bench-upstream", engine)])
        return ServedModel(name, router, owned_by="bench", context_length=8192)

    catalog = ModelCatalog([routed(OM_FREE), routed(OM_PRICED)])
    configure_logging(settings.log_level)
    app = create_app(settings, catalog=catalog)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, server_header=False
    )
    server = uvicorn.Server(config)
    if profile is None:
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises our SIGINT
            server.run()
        return
    import cProfile
    from collections import Counter

    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    statements: Counter[str] = Counter()

    @event.listens_for(Engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        statements[" ".join(sql.split()[:3])[:60]] += 1

    @event.listens_for(Pool, "connect")
    def opened(*args: Any) -> None:
        statements["(new database connection)"] += 1

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(profile)
        Path(profile + ".sql.json").write_text(json.dumps(statements))


# -- LiteLLM Proxy ---------------------------------------------------------------------------
def ensure_litellm(venv: Path, spec: str) -> str:
    """LiteLLM's version, installing it into ``venv`` first if it is not there."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        print(f"installing {spec} into {venv} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
            check=True,
        )
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def litellm_config(upstream: str) -> str:
    return (
        "model_list:\n"
        f"  - model_name: {LITELLM_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: {upstream}\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n"
    )


# -- processes -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """CPU time of the process, its threads and its live descendants."""
        total = 0.0
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            total += _cpu_of(pid)
        return total


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start(
    name: str, argv: list[str], logdir: Path, cpus: set[int] | None, env: dict[str, str]
) -> Child:
    log = logdir / f"{name}.log"
    handle = open(log, "wb")  # noqa: SIM115 (closed with the process)

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen(
        argv,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in {**os.environ, **env}.items() if k != "DATABASE_URL"},
        preexec_fn=pin,
        cwd=str(logdir),
    )
    handle.close()
    return Child(name, proc, log)


def stop(child: Child) -> None:
    if child.proc.poll() is not None:
        return
    pids = _descendants(child.proc.pid)
    child.proc.send_signal(signal.SIGINT)
    try:
        child.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait(timeout=5)
    for pid in pids:  # workers it left behind, by id
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_http(child: Child, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited; see {child.log}:\n{_tail(child.log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} not ready after {timeout:.0f} s; see {child.log}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- orchestration and the table -------------------------------------------------------------
TARGET_NOTES = {
    "direct": "the upstream itself",
    "om-meter": "OpenMaaS: auth, usage record per request, no price (metering only)",
    "om-bill": "OpenMaaS: auth, price + balance (hold, then settlement with the usage record)",
    "om-bill-tier": "OpenMaaS: as om-bill, and the org on a tier (RPM/TPM/concurrency counted)",
    "litellm": "LiteLLM Proxy: master-key auth, 1 worker, no database (no spend logs)",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Requests/s and added latency of OpenMaaS and LiteLLM Proxy relaying to a "
            "zero-latency local upstream, against calling it directly, in the same run."
        )
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, short phases")
    parser.add_argument(
        "--no-litellm", action="store_true", help="skip LiteLLM Proxy (say so in the output)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per phase, unmeasured")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per phase")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated, e.g. 1,32")
    parser.add_argument("--modes", default="json,stream", help="json (non-streamed), stream")
    parser.add_argument(
        "--targets",
        default="om-meter,om-bill,om-bill-tier,litellm",
        help="gateways to measure besides direct",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--litellm-venv", type=Path, default=ROOT / ".venv-litellm")
    parser.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run OpenMaaS under cProfile and write its stats to FILE (slows it down)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.3, 1.0
    return args


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    if argv[:1] == ["_upstream"]:
        run_upstream(int(argv[1]))
        return 0
    if argv[:1] == ["_openmaas"]:
        run_openmaas(Path(argv[1]), int(argv[2]), argv[3], argv[4] if len(argv) > 4 else None)
        return 0
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # children are stopped in `finally`
        signal.signal(sig, _exit_on_signal)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.no_litellm and "litellm" in wanted:
        wanted.remove("litellm")
    litellm_version = None
    if "litellm" in wanted:
        try:
            litellm_version = ensure_litellm(args.litellm_venv.resolve(), args.litellm_spec)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"LiteLLM could not be installed ({exc}); rerun with --no-litellm", flush=True)
            return 2

    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    client_cpus = {cpus[0]} if pin else None
    gateway_cpus = {cpus[1]} if pin else None
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    use_uvloop()

    workdir = Path(tempfile.mkdtemp(prefix="openmaas-gwbench-"))
    children: list[Child] = []
    try:
        up_port = free_port()
        upstream = start(
            "upstream",
            [sys.executable, str(Path(__file__).resolve()), "_upstream", str(up_port)],
            workdir,
            client_cpus,
            {},
        )
        children.append(upstream)
        upstream_url = f"http://127.0.0.1:{up_port}/v1"
        wait_http(upstream, f"{upstream_url}/models", 30)
        targets: dict[str, tuple[Target, Child | None]] = {
            "direct": (Target("direct", up_port, UPSTREAM_MODEL, UPSTREAM_KEY), None)
        }

        if any(t.startswith("om-") for t in wanted):
            om_port = free_port()
            home = workdir / "openmaas-home"
            argv_om = [sys.executable, str(Path(__file__).resolve()), "_openmaas"]
            argv_om += [str(home), str(om_port), upstream_url]
            if args.profile:
                argv_om.append(str(Path(args.profile).resolve()))
            om = start(
                "openmaas", argv_om, workdir, gateway_cpus, {"PYTHONPATH": str(ROOT / "src")}
            )
            children.append(om)
            wait_http(om, f"http://127.0.0.1:{om_port}/readyz", 60)
            keys = json.loads((home / "keys.json").read_text())
            om_targets = {
                "om-meter": Target("om-meter", om_port, OM_FREE, keys["plain"]),
                "om-bill": Target("om-bill", om_port, OM_PRICED, keys["plain"]),
                "om-bill-tier": Target("om-bill-tier", om_port, OM_PRICED, keys["tiered"]),
            }
            for name in wanted:
                if name in om_targets:
                    targets[name] = (om_targets[name], om)

        if "litellm" in wanted:
            ll_port = free_port()
            config = workdir / "litellm.yaml"
            config.write_text(litellm_config(upstream_url))
            ll = start(
                "litellm",
                [
                    str(args.litellm_venv.resolve() / "bin" / "litellm"),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ll_port),
                    "--num_workers",
                    "1",
                ],
                workdir,
                gateway_cpus,
                {
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from GitHub at start
                    "LITELLM_LOG": "ERROR",
                    "LITELLM_TELEMETRY": "False",
                },
            )
            children.append(ll)
            wait_http(ll, f"http://127.0.0.1:{ll_port}/health/liveliness", 180)
            targets["litellm"] = (
                Target("litellm", ll_port, LITELLM_MODEL, LITELLM_MASTER_KEY),
                ll,
            )

        report_header(args, pin, litellm_version, targets)
        for name, (target, _) in targets.items():
            for mode in modes:
                answer = asyncio.run(check_answer(target, mode == "stream"))
                print(f"  check {name:13} {mode:6}: {answer}", flush=True)

        names = list(targets)
        results: dict[tuple[str, str, int], list[PhaseResult]] = {}
        load_before = os.getloadavg()
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for mode in modes:
                for conc in concurrencies:
                    for name in order:
                        target, child = targets[name]
                        res = asyncio.run(
                            run_phase(
                                target, mode == "stream", conc, args.warmup, args.duration, child
                            )
                        )
                        results.setdefault((name, mode, conc), []).append(res)
                        cpu = (
                            f" gateway CPU {res.gateway_cpu / res.elapsed:4.0%}"
                            if res.gateway_cpu is not None and res.elapsed
                            else ""
                        )
                        print(
                            f"  round {round_no + 1} {mode:6} c={conc:<3} {name:13} "
                            f"{res.rps:8.0f} req/s  p50 {res.pct(0.5) * 1e3:7.2f} ms  "
                            f"p99 {res.pct(0.99) * 1e3:7.2f} ms  errors {res.errors}{cpu}",
                            flush=True,
                        )
                        if res.errors:
                            print(f"    first error: {res.error_sample}", flush=True)
        load_after = os.getloadavg()
        print_table(results, names, modes, concurrencies, args.rounds)
        print(
            f"\nload average (1 min) before / after the phases: "
            f"{load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs"
        )
        for child in children:
            stop(child)
        if "om-meter" in targets or "om-bill" in targets or "om-bill-tier" in targets:
            profile = str(Path(args.profile).resolve()) if args.profile else None
            report_usage_records(workdir / "openmaas-home", profile)
        return 0
    finally:
        for child in reversed(children):
            stop(child)
        if args.keep:
            print(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def report_header(
    args: argparse.Namespace,
    pin: bool,
    litellm_version: str | None,
    targets: dict[str, tuple[Target, Child | None]],
) -> None:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model}), {platform.platform()}")
    print(f"python {platform.python_version()}; OpenMaaS at {_git_head()}")
    if pin:
        print("pinning: client and upstream on CPU 0, the gateway under test on CPU 1")
    else:
        print("pinning: none")
    if litellm_version:
        print(f"LiteLLM Proxy {litellm_version} (litellm[proxy] in {args.litellm_venv})")
    elif args.no_litellm:
        print("LiteLLM Proxy: NOT MEASURED (--no-litellm)")
    print(
        f"phases: {args.warmup:g} s warm-up + {args.duration:g} s measured; "
        f"{args.rounds} round(s); median over rounds"
    )
    for name in targets:
        print(f"  {name:13} {TARGET_NOTES[name]}")
    if args.profile:
        print(f"OpenMaaS runs under cProfile (stats to {args.profile}): its numbers are slowed")


def _git_head() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    return out.stdout.strip()[:80] or "?"


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.3g}" if b and b == b and a == a else "—"


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f}" if x == x else "—"


def summarize(runs: list[PhaseResult], direct_runs: list[PhaseResult]) -> dict[str, float]:
    pairs = list(zip(runs, direct_runs, strict=True))
    measured = [r for r in runs if r.gateway_cpu and r.elapsed]
    return {
        "rps": _median([r.rps for r in runs]),
        "p50": _median([r.pct(0.5) for r in runs]),
        "p99": _median([r.pct(0.99) for r in runs]),
        "a50": _median([r.pct(0.5) - d.pct(0.5) for r, d in pairs]),
        "a99": _median([r.pct(0.99) - d.pct(0.99) for r, d in pairs]),
        "util": _median([r.gateway_cpu / r.elapsed for r in measured]),  # type: ignore[operator]
        "per_cpu": _median([len(r.latencies) / r.gateway_cpu for r in measured]),  # type: ignore[operator]
        "errors": float(sum(r.errors for r in runs)),
    }


def print_table(
    results: dict[tuple[str, str, int], list[PhaseResult]],
    names: list[str],
    modes: list[str],
    concurrencies: list[int],
    rounds: int,
) -> None:
    columns = [
        "mode", "conc", "target", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
        "req/s ÷ direct", "req/s ÷ LiteLLM", "gateway CPU", "req/CPU-s",
        "req/CPU-s ÷ LiteLLM", "errors",
    ]  # fmt: skip
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for mode in modes:
        for conc in concurrencies:
            direct_runs = results.get(("direct", mode, conc), [])
            row = {n: summarize(results.get((n, mode, conc), []), direct_runs) for n in names}
            direct, lite = row["direct"], row.get("litellm")
            for name in names:
                v = row[name]
                gateway = name != "direct"
                versus_lite = lite is not None and gateway and name != "litellm"
                cells = [
                    mode,
                    str(conc),
                    name,
                    f"{v['rps']:.0f}",
                    _ms(v["p50"]),
                    _ms(v["p99"]),
                    _ms(v["a50"]) if gateway else "—",
                    _ms(v["a99"]) if gateway else "—",
                    _ratio(v["rps"], direct["rps"]) if gateway else "—",
                    _ratio(v["rps"], lite["rps"]) if versus_lite and lite else "—",
                    f"{v['util']:.0%}" if v["util"] == v["util"] else "—",
                    f"{v['per_cpu']:.0f}" if v["per_cpu"] == v["per_cpu"] else "—",
                    _ratio(v["per_cpu"], lite["per_cpu"]) if versus_lite and lite else "—",
                    str(int(v["errors"])),
                ]
                print("| " + " | ".join(cells) + " |")
    print(f"\n(medians of {rounds} round(s); added = target minus direct, same round and phase)")


def report_usage_records(home: Path, profile: str | None) -> None:
    """Every request OpenMaaS answered left one usage record (read after it stopped)."""
    database = home / "openmaas.db"
    if not database.exists():
        candidates = list(home.glob("*.db"))
        if not candidates:
            print("usage records: database not found")
            return
        database = candidates[0]
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(
            "SELECT model, termination, count(*), sum(cost_micros IS NOT NULL) "
            "FROM usage_records GROUP BY model, termination"
        ).fetchall()
    for model, termination, count, priced in rows:
        print(f"usage records: {model} {termination}: {count} ({priced} with a cost)")
    if profile is not None and Path(profile + ".sql.json").exists():
        total = sum(row[2] for row in rows) or 1
        counts = json.loads(Path(profile + ".sql.json").read_text())
        print(f"SQL statements per usage record (over {total}, startup included):")
        for sql, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            print(f"  {n / total:6.2f}  {sql}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
