"""Gateway overhead: the latency `graft gateway` adds to a request, against calling the replica
directly, and the requests/s it passes on 2 cores.

    PYTHONPATH=operator:tests python bench/gateway.py              # about a minute
    PYTHONPATH=operator:tests python bench/gateway.py --quick      # a smoke run of a few seconds
    PYTHONPATH=operator:tests python bench/gateway.py --profile    # and where the gateway's CPU goes

Not a test: it prints numbers. Three processes, so that no two of them share a GIL or an event
loop: a stub replica (tests/harness/replicas.py's StubReplica, an aiohttp server that answers at
once), the gateway (the production `Gateway` on a StaticView: one account, one API key, one
Deployment with that one replica), and this script, the load generator. The replica's answers
cost no model time, so every figure is HTTP and Python overhead only.

- Latency: one persistent HTTP/1.1 connection to the replica and one to the gateway, requests
  sent one at a time, alternating between the two (the same body; the direct call carries the
  replica's server key, the gateway call the API key). "added, paired" is the gateway's time
  minus the direct time just before or after it, per pair; "p50 gw - p50 direct" is the
  difference of the medians. Non-streaming: until the whole answer is read. Streaming (8
  chunks): time to the first byte of the body (first event) and until the end of the stream.
  The goal is < 2 ms added at p50.
- Throughput: C concurrent clients (asyncio, aiohttp, keep-alive) for a fixed time, requests/s
  and latency under that load, through the gateway and direct. CPU% is of one core, for each
  process over the measured window, and "other" for the rest of the machine; "gw CPU ms/req" is
  the gateway process's CPU (utime+stime from /proc) per request, i.e. its CPU seconds per 1,000
  requests. The gateway is one event loop, so it tops out near 1 / (gw CPU ms/req) requests/s
  per core; on 2 cores the three processes (and any "other") share the cores, so requests/s
  is the figure most at the mercy of the machine, and the gateway's CPU per request the one
  that carries over.

Other work on the machine weighs on everything, so the load average is printed at the start
and the end, and "other" CPU% with each throughput row. `--profile` then runs the gateway under cProfile during one more load phase and
prints its hottest functions (profiling slows it, so that phase's own rate is not reported).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import http.client
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests", ROOT / "operator"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

ACCOUNT = "bench"
DEPLOYMENT = "chat"
MODEL = f"accounts/{ACCOUNT}/models/base"  # what the replica serves, and what requests name
REPLICA_KEY = "bench-server-key"
PATH = "/v1/chat/completions"
CHUNKS = 8
MESSAGES = [{"role": "user", "content": "Write one sentence about benchmarks."}]
BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16}).encode()
STREAM_BODY = json.dumps(
    {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True}
).encode()
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# --- the child processes ---------------------------------------------------------------------


async def serve_replica(chunks: int) -> None:
    from harness.replicas import StubReplica

    replica = StubReplica("r1", {MODEL}, REPLICA_KEY, chunks=chunks, record=False)
    await replica.start()
    _announce({"port": replica.port})
    await _obey_stdin()
    await replica.stop()


async def serve_gateway(replica_port: int) -> None:
    from graft.gateway import apikeys
    from graft.gateway.catalog import build
    from graft.gateway.server import Pod, Settings
    from harness.replicas import RunningGateway, StaticView

    key = apikeys.generate()
    meta: dict[str, Any] = {"creationTimestamp": "2026-01-01T00:00:00Z"}
    catalog = build(
        accounts=[{"metadata": {**meta, "name": ACCOUNT}, "spec": {}}],
        users=[{"metadata": {**meta, "name": "user", "namespace": ACCOUNT}, "spec": {}}],
        api_keys=[
            {
                "metadata": {**meta, "name": "user-key", "namespace": ACCOUNT},
                "spec": {"user": "user"},
                "status": {"keyId": key.key_id, "keyHash": key.key_hash},
            }
        ],
        models=[{"metadata": {**meta, "name": "base", "namespace": ACCOUNT}, "spec": {}}],
        deployments=[
            {
                "metadata": {**meta, "name": DEPLOYMENT, "namespace": ACCOUNT},
                "spec": {"baseModel": "base", "replicas": 1},
            }
        ],
    )
    if catalog.problems:
        raise SystemExit(f"bench catalog: {catalog.problems}")
    pod = Pod(
        "r1", "r1", f"accounts/{ACCOUNT}/deployments/{DEPLOYMENT}", "127.0.0.1", replica_port, True
    )
    view = StaticView(catalog, [pod], {f"{ACCOUNT}/{DEPLOYMENT}": REPLICA_KEY})
    gateway = RunningGateway(None, view, Settings())
    await gateway.start()
    assert gateway.gateway.prober is not None
    if MODEL not in gateway.gateway.prober.models.get("r1", frozenset()):
        raise SystemExit("the gateway does not see the replica serve the bench model")
    _announce({"port": gateway.port, "key": key.key})
    await _obey_stdin()
    await gateway.stop()


def _announce(what: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({**what, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


async def _obey_stdin() -> None:
    """Run until stdin closes. Commands, one a line: `profile-start`, `profile-stop <file>`
    (cProfile of this process's event loop thread, written to <file>); each answered `ok`."""
    loop = asyncio.get_running_loop()
    profiler: cProfile.Profile | None = None
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, _, arg = line.strip().partition(" ")
        if command == "profile-start":
            # CPU time of this thread (the event loop's), not wall time: with three processes on
            # two cores, wall time would charge being descheduled to whatever ran last (a send).
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
        elif command == "profile-stop" and profiler is not None:
            profiler.disable()
            profiler.dump_stats(arg)
            profiler = None
        _announce({"ok": command})


# --- the load generator ----------------------------------------------------------------------


@dataclass
class Child:
    process: subprocess.Popen[str]
    info: dict[str, Any]

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    def command(self, line: str) -> None:
        stdin, stdout = self._pipes()
        stdin.write(line + "\n")
        stdin.flush()
        json.loads(stdout.readline())

    def cpu(self) -> float:
        """CPU seconds used so far (user + system)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK

    def stop(self) -> None:
        stdin, _ = self._pipes()
        stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(timeout=10)

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        return self.process.stdin, self.process.stdout


_children: list[Child] = []  # the processes this script starts, stopped at the end


def start_child(*args: str) -> Child:
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", *args]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise SystemExit(f"{' '.join(args)} did not start (exit {process.returncode})")
    child = Child(process, json.loads(line))
    _children.append(child)
    return child


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


@dataclass
class Timings:
    first: list[float] = field(default_factory=list)  # seconds to the first byte of the body
    total: list[float] = field(default_factory=list)  # seconds to the end of the answer


def one_request(
    conn: http.client.HTTPConnection, target: Target, body: bytes, stream: bool
) -> tuple[float, float]:
    started = time.perf_counter()
    conn.request("POST", PATH, body=body, headers=target.headers)
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"{target.name}: HTTP {response.status}: {response.read()[:300]!r}")
    if stream:
        head = response.read1(65536)  # one chunk of the chunked body: the first event
        first = time.perf_counter() - started
        rest = response.read()
        total = time.perf_counter() - started
        if not (head + rest).endswith(b"data: [DONE]\n\n"):
            raise SystemExit(f"{target.name}: the stream did not end with [DONE]")
        return first, total
    raw = response.read()
    total = time.perf_counter() - started
    if b'"choices"' not in raw:
        raise SystemExit(f"{target.name}: unexpected answer {raw[:300]!r}")
    return total, total


def sequential(
    targets: Sequence[Target], body: bytes, stream: bool, n: int, warmup: int
) -> list[Timings]:
    """n requests to each target, one at a time on one connection each, interleaved (the order
    within a pair alternates, so neither always goes first)."""
    conns = [t.connect() for t in targets]
    results = [Timings() for _ in targets]
    try:
        for i in range(warmup + n):
            order = range(len(targets)) if i % 2 == 0 else reversed(range(len(targets)))
            for j in order:
                first, total = one_request(conns[j], targets[j], body, stream)
                if i >= warmup:
                    results[j].first.append(first)
                    results[j].total.append(total)
    finally:
        for c in conns:
            c.close()
    return results


def percentiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """p50, p90, p99 in milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[89] * 1000, cuts[98] * 1000


@dataclass
class Load:
    target: str
    clients: int
    requests: int  # answered 200 within the measured window
    failed: int
    completed: int  # every request answered, warm-up and the tail after the window included
    seconds: float
    latencies: list[float]
    cpu: dict[str, float]  # process -> CPU seconds over the window


async def load(
    target: Target, clients: int, seconds: float, children: dict[str, Child], warmup: float
) -> Load:
    """`clients` concurrent clients sending non-streaming requests back to back for `seconds`
    (after `warmup` seconds not counted, which also opens the connections)."""
    import aiohttp

    url = f"http://127.0.0.1:{target.port}{PATH}"
    connector = aiohttp.TCPConnector(limit=clients)
    loop = asyncio.get_running_loop()
    counting = False
    done, failed, completed = 0, 0, 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        stop = loop.time() + warmup + seconds

        async def client() -> None:
            nonlocal done, failed, completed
            while loop.time() < stop:
                started = time.perf_counter()
                async with session.post(url, data=BODY, headers=target.headers) as response:
                    await response.read()
                    ok = response.status == 200
                completed += 1
                if counting:
                    done += ok
                    failed += not ok
                    latencies.append(time.perf_counter() - started)

        async def window() -> tuple[float, dict[str, float]]:
            nonlocal counting
            await asyncio.sleep(warmup)
            before = _cpu_now(children)
            started = time.perf_counter()
            counting = True
            await asyncio.sleep(seconds)
            counting = False
            after = _cpu_now(children)
            return time.perf_counter() - started, {k: after[k] - before[k] for k in after}

        measured = asyncio.create_task(window())
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed, cpu = await measured
    return Load(target.name, clients, done, failed, completed, elapsed, latencies, cpu)


def _cpu_now(children: dict[str, Child]) -> dict[str, float]:
    """CPU seconds so far of this process, of each child and ("machine") of all the CPUs."""
    times = os.times()
    # /proc/stat's first line: user nice system idle iowait irq softirq steal ... in ticks
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICK
    return (
        {"client": times.user + times.system}
        | {k: c.cpu() for k, c in children.items()}
        | {"machine": busy}
    )


def profile_gateway(
    gateway: Child, target: Target, clients: int, seconds: float, children: dict[str, Child]
) -> None:
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        out = Path(tmp) / "gateway.prof"
        gateway.command("profile-start")
        result = asyncio.run(load(target, clients, seconds, children, warmup=0.2))
        gateway.command(f"profile-stop {out}")
        stats = pstats.Stats(str(out))
    requests = max(1, result.completed)
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = stats.stats  # type: ignore[attr-defined]
    print(
        f"\nprofile: the gateway's event loop under cProfile, {clients} clients, {requests} "
        f"requests, {1e6 * total / requests:.0f} µs per request profiled (CPU time, inflated by the "
        f"profiler). Times in µs per request; a coroutine counts one call per resumption."
    )
    rows = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)
    per_req = 1e6 / requests
    print("  top 20 by own time:")
    for (filename, line, func), (_, calls, tottime, cumtime, _) in rows[:20]:
        print(
            f"    {tottime * per_req:7.1f} own {cumtime * per_req:8.1f} cum  "
            f"{calls / requests:6.1f}/req  {_short(filename)}:{line} {func}"
        )
    print("  graft.gateway functions by cumulative time:")
    mine = [kv for kv in entries.items() if "graft/gateway/" in kv[0][0]]
    for (filename, line, func), (_, calls, tottime, cumtime, _) in sorted(
        mine, key=lambda kv: kv[1][3], reverse=True
    )[:15]:
        print(
            f"    {tottime * per_req:7.1f} own {cumtime * per_req:8.1f} cum  "
            f"{calls / requests:6.1f}/req  {_short(filename)}:{line} {func}"
        )


def _short(filename: str) -> str:
    for marker in ("site-packages/", "operator/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests each")
    parser.add_argument("--seconds", type=float, default=5.0, help="each throughput phase")
    parser.add_argument("--clients", default="16,64", help="concurrencies, comma-separated")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--profile", action="store_true", help="also profile the gateway")
    parser.add_argument("--serve", choices=["replica", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--replica-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve == "replica":
        asyncio.run(serve_replica(CHUNKS))
        return 0
    if args.serve == "gateway":
        asyncio.run(serve_gateway(args.replica_port))
        return 0

    n, seconds = args.requests, args.seconds
    clients = [int(c) for c in args.clients.split(",")]
    if args.quick:
        n, seconds, clients = 100, 1.0, clients[:1]
    warmup = max(20, n // 10)

    print("graft gateway overhead: stub replica (answers at once) vs the same through the gateway")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"Python {sys.version.split()[0]}; replica, gateway and this client in 3 processes"
    )
    try:
        replica = start_child("replica")
        gateway = start_child("gateway", "--replica-port", str(replica.port))
        children = {"gateway": gateway, "replica": replica}
        direct = Target("direct", replica.port, REPLICA_KEY)
        through = Target("gateway", gateway.port, str(gateway.info["key"]))

        print(
            f"\nlatency (ms), one connection each, one request at a time, direct and gateway "
            f"alternating; {n} of each after {warmup} warm-up"
        )
        print(f"  {'':44} {'p50':>7} {'p90':>7} {'p99':>7}")
        d, g = sequential([direct, through], BODY, False, n, warmup)
        added_p50 = _latency_rows("non-streaming", d.total, g.total)
        d, g = sequential([direct, through], STREAM_BODY, True, n, warmup)
        added_first = _latency_rows(f"streaming {CHUNKS} chunks, first byte", d.first, g.first)
        _latency_rows(f"streaming {CHUNKS} chunks, whole stream", d.total, g.total)

        print(
            f"\nthroughput, non-streaming, {seconds:g} s each, concurrent keep-alive clients "
            f"(CPU% of one core over the window; other: the rest of the machine)"
        )
        print(
            f"  {'':22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}"
            f"  {'CPU% client/gw/replica/other':>28}  {'gw CPU ms/req':>13}"
        )
        for c in clients:
            for target in (through, direct):
                _load_row(asyncio.run(load(target, c, seconds, children, warmup=0.5)))

        if args.profile:
            profile_gateway(gateway, through, clients[0], seconds, children)

        verdict = "met" if added_p50 < 2.0 else "NOT met"
        print(
            f"\ngoal < 2 ms p50 added (non-streaming, p50 gw - p50 direct): {verdict} "
            f"({added_p50:.2f} ms; streaming first byte {added_first:.2f} ms)"
        )
    finally:
        for child in _children:
            child.stop()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


def _latency_rows(title: str, direct: list[float], gateway: list[float]) -> float:
    """Print one measurement's rows; the added p50 (p50 gw - p50 direct) in ms."""
    paired = [g - d for d, g in zip(direct, gateway, strict=True)]
    rows = [
        ("direct", percentiles(direct)),
        ("gateway", percentiles(gateway)),
        ("added, paired (gw - direct)", percentiles(paired)),
    ]
    print(f"  {title}")
    for name, (p50, p90, p99) in rows:
        print(f"    {name:42} {p50:7.2f} {p90:7.2f} {p99:7.2f}")
    added = rows[1][1][0] - rows[0][1][0]
    print(f"    {'added, p50 gw - p50 direct':42} {added:7.2f}")
    return added


def _load_row(result: Load) -> None:
    rate = result.requests / result.seconds
    p50, _, p99 = percentiles(result.latencies) if len(result.latencies) > 1 else (0, 0, 0)
    ours = ("client", "gateway", "replica")
    others = result.cpu["machine"] - sum(result.cpu[k] for k in ours)
    cpu = "/".join(
        f"{100 * v / result.seconds:.0f}" for v in [*(result.cpu[k] for k in ours), others]
    )
    gw_ms = (
        f"{1000 * result.cpu['gateway'] / result.requests:.3f}"
        if result.target == "gateway" and result.requests
        else "-"
    )
    name = f"{result.target}, {result.clients} clients"
    print(
        f"  {name:22} {rate:7.0f} {p50:7.2f} {p99:7.2f} {result.failed:6d}  {cpu:>28}  {gw_ms:>13}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
