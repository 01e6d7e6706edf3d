"""Gateway overhead: a bare Python relay, OpenMaaS and LiteLLM Proxy against calling the
upstream directly, per core and for the whole machine, in one run.

One zero-latency OpenAI-compatible upstream (a raw asyncio HTTP server answering a canned
completion, or a canned short SSE stream with a usage chunk) runs in its own process. The
same client (a raw asyncio HTTP/1.1 keep-alive client in this process, one connection per
concurrent request) sends the same chat-completion payload, non-streamed and streamed, at
each concurrency, to:

- ``direct``: the upstream itself;
- ``bare``: the bare relay (``bare_relay.py``: Starlette + uvicorn + aiohttp + orjson, no
  auth, no accounting), the floor of a Python gateway;
- ``om-meter``: OpenMaaS (``openmaas serve``) with auth and usage records, no price;
- ``om-bill``: OpenMaaS with a price and a prepaid balance (a hold per request, settled
  with the usage record);
- ``om-bill-tier``: the same, and the organization on a rate-limit tier (RPM, TPM and
  concurrency counted, never refusing at these rates);
- ``litellm``: LiteLLM Proxy (``litellm[proxy]``, its own virtualenv ``.venv-litellm/``,
  created on demand), master-key auth, no database.

Scopes (``--scope core,machine``): ``core`` gives every gateway one process pinned to one
CPU, the client and the upstream on another; ``machine`` gives every gateway as many
workers as there are CPUs (``openmaas serve --workers N``, ``uvicorn --workers N``,
``litellm --num_workers N``), nothing pinned: the client and the upstream share the CPUs
with it. Several OpenMaaS workers need Redis for exact tier limits: ``om-bill-tier`` then
runs against a throwaway ``redis-server``, or is skipped when there is none; ``--redis``
has it count in Redis in scope ``core`` too (one process counts in memory by default).

Every phase is ``--warmup`` seconds then ``--duration`` seconds measured; each round runs
every (mode, concurrency) with the targets in rotated order; the table shows the median
over rounds. "Added" latency is the target's percentile minus the direct percentile of the
same round. CPU is every process of the gateway (supervisor, workers, engine host) read
from ``/proc`` over the measured window; a database server or Redis the gateway uses is
reported beside it ("services").

    .venv/bin/python benchmarks/gateway.py            # full run
    .venv/bin/python benchmarks/gateway.py --quick --no-litellm --scope core

``docs/benchmarks.md`` ("Gateway overhead") explains the method and the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_report import aims, print_header, print_table
from processes import (
    Child,
    Trees,
    answering_workers,
    clean_environment,
    free_port,
    start,
    stop,
    tail,
    wait_http,
)
from rawhttp import (  # the benchmark's upstream and client, beside this script
    UPSTREAM_KEY,
    UPSTREAM_MODEL,
    PhaseResult,
    Target,
    check_answer,
    run_phase,
    run_upstream,
    use_uvloop,
)
from services import (
    PostgresCluster,
    RedisServer,
    create_database,
    postgres_unavailable,
    redis_unavailable,
)

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SCRIPT = str(Path(__file__).resolve())  # its children run it again: _upstream, _seed, ...
LITELLM_MASTER_KEY = "sk-litellm-bench-master"
LITELLM_MODEL = "bench"
BARE_MODEL = "bench-bare"  # the bare relay sends the upstream's name whatever it is sent
OM_FREE = "bench-free"  # no price: metering only
OM_PRICED = "bench-priced"  # a price: hold and settlement
OM_TARGETS = ("om-meter", "om-bill", "om-bill-tier")
ALL_TARGETS = ("bare", *OM_TARGETS, "litellm")
WORKER_HEADER = "x-openmaas-worker"

CATALOG = """\
models:
  - name: {free}
    owned_by: bench
    context_length: 8192
    deployments:
      - {{id: upstream-free, engine: openai, base_url: "{url}", upstream_model: {model},
         data_class: local, slots: 256}}
  - name: {priced}
    owned_by: bench
    context_length: 8192
    deployments:
      - {{id: upstream-priced, engine: openai, base_url: "{url}", upstream_model: {model},
         data_class: local, slots: 256}}
"""


# -- OpenMaaS: seeded through its admin services, served by `openmaas serve` -----------------
def seed_openmaas(home: Path) -> None:
    """Two organizations with a key each and a balance that never runs out here, a price
    for the priced model, a tier (far above the load) for the second organization. The
    settings come from the environment, as the server's do."""
    from openmaas.accounts.admin import NewOrganization
    from openmaas.billing.admin_bodies import NewFunds, NewPrice, TermsChange, TierLimits
    from openmaas.platform import open_platform
    from openmaas.settings import Settings

    async def seed() -> dict[str, str]:
        async with open_platform(Settings()) as platform:
            accounts = platform.accounts_admin("benchmark")
            billing = platform.billing_admin("benchmark")
            plain = await accounts.create_org(NewOrganization(name="bench"))
            tiered = await accounts.create_org(NewOrganization(name="bench-tier"))
            # 1 CNY per 1M input tokens, 0.5 cached, 2 per 1M output
            price = {"model": OM_PRICED, "input": "1", "cached_input": "0.5", "output": "2"}
            await billing.set_price(NewPrice.parse(price))
            huge = {"rpm": 10**9, "tpm": 10**12, "concurrency": 100_000}
            await billing.set_tier("bench", TierLimits.parse(huge))
            await billing.set_org(tiered.id, TermsChange.parse({"tier": "bench"}))
            for org in (plain, tiered):  # 1,000,000 CNY each
                await billing.top_up(org.id, NewFunds.parse({"amount": "1000000"}))
            return {
                "plain": (await accounts.issue_key(plain.id, "bench")).token,
                "tiered": (await accounts.issue_key(tiered.id, "bench")).token,
            }

    (home / "keys.json").write_text(json.dumps(asyncio.run(seed())))


def seeded_home(
    workdir: Path, home: Path, upstream_url: str, extra: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """``home`` made and seeded (``seed_openmaas``, in a child) for the benchmark's catalog,
    its two models on ``upstream_url`` (``workdir/catalog.yaml``): the environment that
    serves it (``extra`` added) and its keys."""
    home.mkdir()
    catalog = workdir / "catalog.yaml"
    catalog.write_text(
        CATALOG.format(free=OM_FREE, priced=OM_PRICED, url=upstream_url, model=UPSTREAM_MODEL)
    )
    env = {
        "PYTHONPATH": str(ROOT / "src"),
        "OPENMAAS_HOME": str(home),
        "OPENMAAS_EMBEDDED_MODELS": "false",
        "OPENMAAS_CATALOG_FILE": str(catalog),
        "OPENMAAS_LOG_LEVEL": "INFO",
        **(extra or {}),
    }
    seeding = subprocess.run(
        python(SCRIPT, "_seed", str(home)),
        env=clean_environment(env),
        cwd=str(workdir),
        capture_output=True,
        text=True,
    )
    if seeding.returncode != 0:
        raise RuntimeError(f"seeding OpenMaaS failed:\n{seeding.stdout}\n{seeding.stderr}")
    return env, json.loads((home / "keys.json").read_text())


def report_openmaas(expected: int) -> int:
    """After the server stopped: one usage record per answered request, nothing held, the
    ledger summing to zero. Exit status 1 when a check fails."""
    from sqlalchemy import text

    from openmaas.platform import open_platform
    from openmaas.settings import Settings

    async def read() -> int:
        failed = 0
        async with open_platform(Settings()) as platform:
            async with platform.database.connect() as conn:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT model, termination, count(*), count(cost_micros) "
                            "FROM usage_records GROUP BY model, termination ORDER BY model"
                        )
                    )
                ).all()
            ledger = await platform.ledger.refresh()
            totals = ledger.totals_by_unit()
            billing = platform.billing_admin("benchmark")
            held = {o.name: (await billing.balance(o.id)).held for o in await billing.list_orgs()}
        total = 0
        for model, termination, count, priced in rows:
            total += count
            print(f"  usage records: {model} {termination}: {count} ({priced} with a cost)")
        if total != expected:
            failed = 1
            print(f"  CHECK FAILED: {total} usage records for {expected} answered requests")
        else:
            print(f"  check: one usage record per answered request ({total})")
        if any(totals.values()) or any(held.values()) or ledger.open_holds():
            failed = 1
            print(f"  CHECK FAILED: ledger totals {totals}, held {held}, open holds")
        else:
            print("  check: the ledger sums to zero, nothing held")
        return failed

    return asyncio.run(read())


def run_openmaas_profiled(profile: str) -> None:
    """``openmaas serve`` (one worker, settings from the environment) under cProfile, with
    the SQL statements it ran counted (``PROFILE.sql.json``)."""
    import cProfile
    from collections import Counter

    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    from openmaas.server.runner import serve
    from openmaas.settings import Settings

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
        serve(Settings())
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


# -- one scope: its processes and its phases -------------------------------------------------
@dataclass
class Scope:
    name: str  # "core" or "machine"
    workers: int  # processes per gateway
    gateway_cpus: set[int] | None  # None: not pinned
    client_cpus: set[int] | None  # the client's, the upstream's and the services'
    every_cpu: set[int]  # what this process may use at the start

    @property
    def pinned(self) -> bool:
        return self.gateway_cpus is not None


@dataclass
class Stack:
    """Everything started for one scope, stopped in reverse order at the end."""

    workdir: Path
    children: list[Child] = field(default_factory=list)
    postgres: PostgresCluster | None = None
    redis: RedisServer | None = None
    om_home: Path | None = None
    om_env: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for child in reversed(self.children):
            stop(child)
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()


Targets = dict[str, tuple[Target, Trees | None, Trees | None]]  # target, gateway, services


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def start_targets(
    args: argparse.Namespace, scope: Scope, wanted: list[str], stack: Stack
) -> Targets:
    """The upstream and every gateway of ``wanted`` for ``scope``, answering."""
    workdir = stack.workdir
    up_port = free_port()
    upstream = start(
        "upstream", python(SCRIPT, "_upstream", str(up_port)), workdir, scope.client_cpus, {}
    )
    stack.children.append(upstream)
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    wait_http(upstream, f"{upstream_url}/models", 30)
    targets: Targets = {
        "direct": (Target("direct", up_port, UPSTREAM_MODEL, UPSTREAM_KEY), None, None)
    }

    if "bare" in wanted:
        port = free_port()
        argv = python(
            "-m", "uvicorn", "--factory", "bare_relay:create_app", "--app-dir", str(HERE),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(scope.workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--no-server-header", "--log-level", "warning",
        )  # fmt: skip
        env = {"BENCH_UPSTREAM_URL": upstream_url, "BENCH_UPSTREAM_MODEL": UPSTREAM_MODEL}
        bare = start("bare", argv, workdir, scope.gateway_cpus, env)
        stack.children.append(bare)
        wait_http(bare, f"http://127.0.0.1:{port}/healthz", 60)
        targets["bare"] = (
            Target("bare", port, BARE_MODEL, "unused"),
            Trees([bare.proc.pid]),
            None,
        )

    if any(t in OM_TARGETS for t in wanted):
        targets.update(start_openmaas(args, scope, wanted, stack, upstream_url))

    if "litellm" in wanted:
        port = free_port()
        config = workdir / "litellm.yaml"
        config.write_text(litellm_config(upstream_url))
        argv = [
            str(args.litellm_venv.resolve() / "bin" / "litellm"), "--config", str(config),
            "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(scope.workers),
        ]  # fmt: skip
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from GitHub at start
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
        }
        lite = start("litellm", argv, workdir, scope.gateway_cpus, env)
        stack.children.append(lite)
        wait_http(lite, f"http://127.0.0.1:{port}/health/liveliness", 180)
        targets["litellm"] = (
            Target("litellm", port, LITELLM_MODEL, LITELLM_MASTER_KEY),
            Trees([lite.proc.pid]),
            None,
        )
    return targets


def counts_in_redis(args: argparse.Namespace, scope: Scope) -> bool:
    """Whether ``om-bill-tier`` counts its limits in Redis: with several workers (exact
    across them), or with ``--redis``."""
    return scope.workers > 1 or bool(args.redis)


def start_openmaas(
    args: argparse.Namespace, scope: Scope, wanted: list[str], stack: Stack, upstream_url: str
) -> Targets:
    extra: dict[str, str] = {}
    services: list[int] = []
    if args.database == "postgres":
        stack.postgres = PostgresCluster(cpus=scope.client_cpus).start()
        url = stack.postgres.url("openmaas")
        asyncio.run(create_database(url))
        extra["OPENMAAS_DATABASE_URL"] = url
        services.append(stack.postgres.postmaster_pid)
    if "om-bill-tier" in wanted and counts_in_redis(args, scope):
        stack.redis = RedisServer(cpus=scope.client_cpus).start()
        extra["OPENMAAS_REDIS_URL"] = stack.redis.url
        services.append(stack.redis.pid)
    home = stack.workdir / f"openmaas-{scope.name}"
    env, keys = seeded_home(stack.workdir, home, upstream_url, extra)
    stack.om_home, stack.om_env = home, env
    port = free_port()
    profile = args.profile and scope.name == "core"
    if profile:
        argv = python(SCRIPT, "_openmaas", str(Path(args.profile).resolve()))
        env = {**env, "OPENMAAS_PORT": str(port), "OPENMAAS_WORKERS": "1"}
    else:
        argv = python("-m", "openmaas", "serve", "--port", str(port))
        argv += ["--workers", str(scope.workers)]
    om = start("openmaas", argv, stack.workdir, scope.gateway_cpus, env)
    stack.children.append(om)
    readyz = f"http://127.0.0.1:{port}/readyz"
    wait_http(om, readyz, 90)
    if scope.workers > 1:
        seen = answering_workers(readyz, WORKER_HEADER, scope.workers, 60)
        print(f"  OpenMaaS: {seen} of {scope.workers} workers answered before measuring")
    gateway = Trees([om.proc.pid])
    used = Trees(services) if services else None
    found = {
        "om-meter": Target("om-meter", port, OM_FREE, keys["plain"]),
        "om-bill": Target("om-bill", port, OM_PRICED, keys["plain"]),
        "om-bill-tier": Target("om-bill-tier", port, OM_PRICED, keys["tiered"]),
    }
    return {name: (t, gateway, used) for name, t in found.items() if name in wanted}


def check_openmaas(stack: Stack, expected: int) -> bool:
    """Stop OpenMaaS, then check its database (``report_openmaas`` in a child)."""
    for child in [c for c in stack.children if c.name == "openmaas"]:
        stop(child)
        stack.children.remove(child)
    assert stack.om_home is not None
    done = subprocess.run(
        python(SCRIPT, "_report", str(expected)),
        env=clean_environment(stack.om_env),
        cwd=str(stack.workdir),
        capture_output=True,
        text=True,
    )
    print(done.stdout.rstrip())
    if done.returncode != 0:
        print(done.stderr[-3000:])
    return done.returncode == 0


Results = dict[tuple[str, str, int], list[PhaseResult]]


def measure_scope(
    args: argparse.Namespace, scope: Scope, wanted: list[str], workdir: Path, header: dict[str, Any]
) -> bool:
    """Start the scope's processes, check every target's answer, run the phases, print the
    table and the checks; False when a check failed."""
    os.sched_setaffinity(0, scope.client_cpus or scope.every_cpu)
    stack = Stack(workdir / scope.name)
    stack.workdir.mkdir()
    try:
        targets = start_targets(args, scope, wanted, stack)
        print_header(args, scope, header, targets)
        checks = 0
        for name, (target, _, _) in targets.items():
            for mode in args.modes:
                answer = asyncio.run(check_answer(target, mode == "stream"))
                checks += name in OM_TARGETS
                print(f"  check {name:13} {mode:6}: {answer}", flush=True)
        names = list(targets)
        results: Results = {}
        load_before = os.getloadavg()
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for mode in args.modes:
                for conc in args.concurrency:
                    for name in order:
                        target, gateway, services = targets[name]
                        res = asyncio.run(
                            run_phase(
                                target, mode == "stream", conc, args.warmup, args.duration,
                                gateway, services,
                            )
                        )  # fmt: skip
                        results.setdefault((name, mode, conc), []).append(res)
                        print_phase(scope, round_no, mode, conc, name, res)
        load_after = os.getloadavg()
        print_table(scope, results, names, args.modes, args.concurrency, args.rounds)
        print(
            f"\nload average (1 min) before / after the phases: "
            f"{load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs"
        )
        for line in aims(results, names, args.modes, args.concurrency):
            print(line)
        ok = True
        if stack.om_home is not None:
            answered = sum(
                r.answered for (n, _, _), runs in results.items() if n in OM_TARGETS for r in runs
            )
            ok = check_openmaas(stack, answered + checks)
            if args.profile and scope.name == "core":
                report_statements(str(Path(args.profile).resolve()), answered + checks)
        return ok
    except RuntimeError as exc:
        print(f"scope {scope.name}: {exc}")
        for child in stack.children:
            print(f"--- {child.log.name} ---\n{tail(child.log)}")
        return False
    finally:
        stack.close()


def print_phase(
    scope: Scope, round_no: int, mode: str, conc: int, name: str, res: PhaseResult
) -> None:
    cpu = ""
    if res.gateway_cpu is not None and res.elapsed:
        cpu = f"  gateway {res.gateway_cpu / res.elapsed:4.2f} CPUs"
    client = res.client_cpu / res.elapsed if res.elapsed else 0.0
    warn = f"  (client at {client:.0%} of a CPU: it may limit this phase)" if client > 0.9 else ""
    print(
        f"  {scope.name} round {round_no + 1} {mode:6} c={conc:<3} {name:13} "
        f"{res.rps:8.0f} req/s  p50 {res.pct(0.5) * 1e3:7.2f} ms  "
        f"p99 {res.pct(0.99) * 1e3:7.2f} ms  errors {res.errors}{cpu}{warn}",
        flush=True,
    )
    if res.errors:
        print(f"    first error: {res.error_sample}", flush=True)


def report_statements(profile: str, requests: int) -> None:
    path = Path(profile + ".sql.json")
    if not path.exists():
        return
    counts = json.loads(path.read_text())
    print(f"SQL statements per request (over {requests}, startup included):")
    for sql, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {n / max(requests, 1):6.2f}  {sql}")


# -- the command -----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Requests/s, added latency and CPU per request of a bare Python relay, OpenMaaS "
            "and LiteLLM Proxy relaying to a zero-latency local upstream, against calling it "
            "directly, per core and for the whole machine, in the same run."
        )
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, short phases")
    parser.add_argument(
        "--scope",
        default="core,machine",
        help="core (one process per gateway, pinned), machine (workers = CPUs), or both",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="workers per gateway in scope machine (CPUs)"
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="OpenMaaS's database: SQLite, or a throwaway PostgreSQL cluster",
    )
    parser.add_argument(
        "--no-litellm", action="store_true", help="skip LiteLLM Proxy (say so in the output)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per phase, unmeasured")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per phase")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated, e.g. 1,32")
    parser.add_argument("--modes", default="json,stream", help="json (non-streamed), stream")
    parser.add_argument(
        "--targets", default=",".join(ALL_TARGETS), help="gateways to measure besides direct"
    )
    parser.add_argument("--no-pin", action="store_true", help="scope core: do not pin to CPUs")
    parser.add_argument(
        "--redis",
        action="store_true",
        help="om-bill-tier counts in a throwaway redis-server in every scope (by default only "
        "with several workers; one process counts in memory)",
    )
    parser.add_argument("--litellm-venv", type=Path, default=ROOT / ".venv-litellm")
    parser.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="scope core: run OpenMaaS under cProfile, stats to FILE (slows it down)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.3, 1.0
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]
    args.scope = [s.strip() for s in args.scope.split(",") if s.strip()]
    for name in args.scope:
        if name not in ("core", "machine"):
            parser.error(f"--scope: {name!r} is neither core nor machine")
    return args


def scopes(args: argparse.Namespace, every_cpu: set[int]) -> list[Scope]:
    cpus = sorted(every_cpu)
    found = []
    for name in args.scope:
        if name == "core":
            pin = not args.no_pin and len(cpus) >= 2
            gateway, client = ({cpus[1]}, {cpus[0]}) if pin else (None, None)
            found.append(Scope("core", 1, gateway, client, every_cpu))
        else:
            found.append(Scope("machine", args.workers or len(cpus), None, None, every_cpu))
    return found


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    commands = {
        "_upstream": lambda rest: run_upstream(int(rest[0])),
        "_seed": lambda rest: seed_openmaas(Path(rest[0])),
        "_openmaas": lambda rest: run_openmaas_profiled(rest[0]),
    }
    if argv[:1] == ["_report"]:
        return report_openmaas(int(argv[1]))
    if argv[:1] and argv[0] in commands:
        commands[argv[0]](argv[1:])
        return 0
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # children are stopped in `finally`
        signal.signal(sig, _exit_on_signal)
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(wanted) - set(ALL_TARGETS)
    if unknown:
        print(f"unknown targets: {', '.join(sorted(unknown))} (known: {', '.join(ALL_TARGETS)})")
        return 2
    if args.no_litellm and "litellm" in wanted:
        wanted.remove("litellm")
    header: dict[str, Any] = {"litellm": None, "skipped": []}
    if "litellm" in wanted:
        try:
            header["litellm"] = ensure_litellm(args.litellm_venv.resolve(), args.litellm_spec)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"LiteLLM could not be installed ({exc}); rerun with --no-litellm", flush=True)
            return 2
    if "bare" in wanted:
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            print("the bare relay needs aiohttp: pip install -e '.[bench]' (or --targets ...)")
            return 2
    if args.database == "postgres" and (reason := postgres_unavailable()):
        print(f"--database postgres: {reason}")
        return 2
    use_uvloop()
    every_cpu = os.sched_getaffinity(0)
    workdir = Path(tempfile.mkdtemp(prefix="openmaas-gwbench-"))
    ok = True
    try:
        for scope in scopes(args, every_cpu):
            scoped = list(wanted)
            tiered_in_redis = counts_in_redis(args, scope)
            if "om-bill-tier" in scoped and tiered_in_redis and (reason := redis_unavailable()):
                scoped.remove("om-bill-tier")
                header["skipped"].append(
                    f"om-bill-tier in scope {scope.name}: counted in Redis (--redis, or "
                    f"{scope.workers} workers), and {reason}"
                )
            ok = measure_scope(args, scope, scoped, workdir, header) and ok
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, every_cpu)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
