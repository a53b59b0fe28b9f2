"""`make bench`: the gateway against calling the mock upstream directly, in one run, on this machine.

Starts keyrelay's mock upstream and one gateway worker (each its own process; pinned to CPUs when
taskset exists), creates a key with every limit and rule set, then runs the load generator (a
separate process) closed-loop against the mock directly and through the gateway, non-streaming
and streaming; then the other wires: the Anthropic and Gemini passthroughs and the translated paths
(OpenAI → Anthropic, OpenAI → Gemini, Anthropic → OpenAI, Gemini → OpenAI); then the referee's bare
passthrough proxy (../shared/bench/passthrough.py, when present) on the same mock; then 100,000 keys in
rotation against one key on a fresh gateway (BENCH_ROTATION_KEYS; 0 skips it). Since the mock and the
load generator share one CPU and often limit req/s, each gateway path is also compared with the referee
by CPU time per request: referee µs ÷ path µs is the throughput ratio the two would have on one saturated
core. The OpenAI path is paired with referee runs BENCH_ROUNDS times, with in-process limits and with Redis.
Prints a markdown table and appends it with the machine and date to docs/benchmarks.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# The referee's bare passthrough proxy (../shared/bench), measured in the same run when it is there.
REFEREE = Path(os.environ.get("BENCH_REFEREE_PASSTHROUGH", ROOT.parent / "shared" / "bench" / "passthrough.py"))
# Keys in rotation for the row that compares them with one key (BENCH_ROTATION_KEYS; 0 skips the row).
ROTATION_KEYS = int(os.environ.get("BENCH_ROTATION_KEYS", "100000"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else cmd


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def load(
    url: str,
    key: str,
    model: str,
    stream: bool,
    conns: int,
    seconds: float,
    wire: str = "openai",
    keys: Path | None = None,
    once: bool = False,
) -> dict[str, float]:
    """One run of the load generator; ``keys``: a file of keys in rotation (``once``: each key once, then stop)."""
    rotation = [] if keys is None else ["--keys", str(keys), *(["--once"] if once else [])]
    out = subprocess.run(
        pinned(
            1,
            [
                PY,
                str(ROOT / "bench" / "loadgen.py"),
                url,
                key,
                model,
                "--stream",
                str(int(stream)),
                "-c",
                str(conns),
                "-d",
                str(seconds),
                "--wire",
                wire,
                *rotation,
            ],
        ),
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"] and not result["req_s"]:
        raise SystemExit(f"every request to {url} ({wire}, model {model}, stream={stream}) failed: not measured")
    return result


def ttfb(direct_url: str, gateway_url: str, key: str, model: str) -> tuple[dict[str, float], dict[str, float]]:
    """Median and p90 time to first byte of paced streams, direct and through the gateway (bench/ttfb.py)."""
    out = subprocess.run(
        pinned(1, [PY, str(ROOT / "bench" / "ttfb.py"), direct_url, gateway_url, key, model]),
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["direct"], result["gateway"]


FRAMINGS = (
    ("LF", "gpt-4o-mini-paced"),
    ("CRLF", "gpt-4o-mini-paced-framing-crlf"),
    ("CR", "gpt-4o-mini-paced-framing-cr"),
)


# Other wires, with in-process limits: (label, client wire, gateway path, model, upstream wire's direct path).
# The direct run calls the mock's endpoint of the wire the upstream speaks, so each ratio compares the gateway
# with calling the same upstream directly.
# A Gemini path names its model and method: {method} is generateContent, or streamGenerateContent?alt=sse.
GEMINI_GATEWAY = "/v1beta/models/gemini-bench:{method}"
GEMINI_DIRECT = "/v1beta/models/gemini-2.5-flash:{method}"
WIRE_SCENARIOS = (
    ("Anthropic passthrough", "anthropic", "/v1/messages", "claude-bench", "anthropic", "/v1/messages"),
    ("Gemini passthrough", "gemini", GEMINI_GATEWAY, "gemini-bench", "gemini", GEMINI_DIRECT),
    ("OpenAI → Anthropic", "openai", "/v1/chat/completions", "claude-bench", "anthropic", "/v1/messages"),
    ("OpenAI → Gemini", "openai", "/v1/chat/completions", "gemini-bench", "gemini", GEMINI_DIRECT),
    ("Anthropic → OpenAI", "anthropic", "/v1/messages", "gpt-4o-mini", "openai", "/v1/chat/completions"),
    (
        "Gemini → OpenAI",
        "gemini",
        "/v1beta/models/gpt-4o-mini:{method}",
        "gpt-4o-mini",
        "openai",
        "/v1/chat/completions",
    ),
)


def with_method(path: str, stream: bool) -> str:
    """A Gemini path with its method for this mode (other paths unchanged)."""
    return path.format(method="streamGenerateContent?alt=sse" if stream else "generateContent")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_up(url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


class Referee:
    """The referee passthrough (an aiohttp proxy checking a key in a dict) on the same mock, kept running.

    ``measure`` runs the load generator against it and returns the result with its CPU per request, so each
    gateway path can be paired with a referee run made right after it, in the same state of the machine.
    """

    def __init__(self, mock_port: int, conns: int, seconds: float) -> None:
        self.port = free_port()
        self.conns, self.seconds = conns, seconds
        cmd = [PY, str(REFEREE), "--port", str(self.port), "--upstream", f"http://127.0.0.1:{mock_port}", "--parse"]
        self.proc = subprocess.Popen(pinned(0, cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/health")

    def measure(self, stream: bool) -> dict[str, float]:
        before = cpu_seconds(self.proc.pid)
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        result = load(url, "sk-pass-1", "gpt-4o-mini", stream, self.conns, self.seconds)
        result["cpu_us"] = (cpu_seconds(self.proc.pid) - before) / max(1, result["requests"]) * 1e6
        return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


def measured(
    proc: subprocess.Popen[bytes],
    url: str,
    key: str,
    model: str,
    stream: bool,
    conns: int,
    seconds: float,
    wire: str = "openai",
) -> dict[str, float]:
    """One run of the load generator against the gateway ``proc``, with its CPU per request (``cpu_us``)."""
    before = cpu_seconds(proc.pid)
    result = load(url, key, model, stream, conns, seconds, wire)
    result["cpu_us"] = (cpu_seconds(proc.pid) - before) / max(1, result["requests"]) * 1e6
    return result


def in_turn(
    round_no: int, gateway: Callable[[], dict[str, float]], referee: Callable[[], dict[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """One pair of runs, the gateway's and the referee's: the gateway first in even rounds, the referee in odd ones.

    Alternating the order (ABBA over two rounds) makes a steady drift of the machine's speed, which moves a run's CPU
    per request by several percent over a minute on a shared VM, weigh on both sides of the pairs alike, where
    always running the gateway first would favour whichever side the drift helps.
    """
    if round_no % 2 == 0:
        first = gateway()
        return first, referee()
    second = referee()
    return gateway(), second


def median_pairs(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(median gateway µs, median referee µs, median of the per-round ratios referee ÷ gateway)."""
    return (
        statistics.median(g for g, _ in pairs),
        statistics.median(r for _, r in pairs),
        statistics.median(r / g for g, r in pairs if g),
    )


def gateway_cmd(db: str, port: int, config: Path) -> list[str]:
    return pinned(
        0, [PY, "-m", "keyrelay", "--database-url", db, "serve", "--port", str(port), "--config", str(config)]
    )


def rss_mib(pid: int) -> float:
    """Resident set size of a process (Linux /proc; 0 elsewhere), MiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kib / 1024


def wait_records(db_path: Path, count: int, timeout: float = 120) -> None:
    """Wait until the gateway has written ``count`` usage records (its flush after a run is not measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db_path) as conn:
            if conn.execute("SELECT count(*) FROM usage_records").fetchone()[0] >= count:
                return
        time.sleep(0.5)


def key_rotation(
    db: str, db_path: Path, port: int, config: Path, key: str, tmp: Path, conns: int, seconds: float, rounds: int
) -> list[str]:
    """Throughput with ROTATION_KEYS keys in rotation against one key: the lines of its table.

    A fresh gateway (memory limits, non-streaming, OpenAI wire) whose key cache holds every key: the keys are copies
    of the benchmark key (same account, group and rules; bench/make_key.py --copies), each used once first (loaded
    from the store), the usage records of that written; then, ``rounds`` times, one key, then every key in turn,
    each request of every connection taking the next key (bench/loadgen.py --keys). Both through the same
    load-generator path, in the same process, whose CPU per request is measured around each run.
    """
    keys_file, single_file = tmp / "rotation-keys", tmp / "single-key"
    make = [PY, str(ROOT / "bench" / "make_key.py"), db, "--copies", str(ROTATION_KEYS), "--out", str(keys_file)]
    subprocess.run(make, check=True, capture_output=True)
    single_file.write_text(key + "\n")
    env = {**os.environ, "KEYRELAY_LOG_LEVEL": "warning", "KEYRELAY_KEY_CACHE_SIZE": str(ROTATION_KEYS + 16)}
    env.pop("KEYRELAY_REDIS_URL", None)
    proc = subprocess.Popen(gateway_cmd(db, port, config), env=env)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    runs: dict[int, list[dict[str, float]]] = {1: [], ROTATION_KEYS: []}
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        with sqlite3.connect(db_path) as conn:
            written = conn.execute("SELECT count(*) FROM usage_records").fetchone()[0]
        started = time.monotonic()
        first = load(url, "x", "gpt-4o-mini", False, conns, seconds, keys=keys_file, once=True)
        first_s = time.monotonic() - started
        wait_records(db_path, written + int(first["requests"]))
        for round_no in range(rounds):
            # One key first in even rounds, every key first in odd ones (ABBA: a drift of the machine's speed
            # during the rounds weighs on both alike).
            order = ((1, single_file), (ROTATION_KEYS, keys_file))
            for count, file in order if round_no % 2 == 0 else order[::-1]:
                before = cpu_seconds(proc.pid)
                result = load(url, "x", "gpt-4o-mini", False, conns, seconds, keys=file)
                result["cpu_us"] = (cpu_seconds(proc.pid) - before) / max(1, result["requests"]) * 1e6
                runs[count].append(result)
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    one = {m: statistics.median(r[m] for r in runs[1]) for m in ("req_s", "cpu_us")}
    lines = [
        "",
        f"Keys in rotation (memory limits, non-streaming, OpenAI wire; a fresh gateway whose key cache holds them all; "
        f"{rounds} round(s), medians):",
        "",
        "| keys in rotation | gateway req/s | gateway p50/p99 ms | gateway CPU µs/request | req/s ÷ one key "
        "| CPU ÷ one key | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for count, results in runs.items():
        req_s = statistics.median(r["req_s"] for r in results)
        cpu_us = statistics.median(r["cpu_us"] for r in results)
        p50 = statistics.median(r["p50_ms"] for r in results)
        p99 = statistics.median(r["p99_ms"] for r in results)
        errors = sum(int(r["errors"]) for r in results)
        lines.append(
            f"| {count:,} | {req_s:.0f} | {p50:.2f}/{p99:.2f} | {cpu_us:.0f} | {req_s / one['req_s']:.2f}× "
            f"| {cpu_us / one['cpu_us']:.2f}× | {errors} |"
        )
    lines += [
        "",
        f"Before that, the first use of each of the {ROTATION_KEYS:,} keys (loaded from the store): "
        f"{first['req_s']:.0f} req/s, p50/p99 {first['p50_ms']:.2f}/{first['p99_ms']:.2f} ms, {first_s:.0f} s, "
        f"{int(first['errors'])} errors. The gateway's resident memory at the end: {rss:.0f} MiB.",
    ]
    return lines


def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    # Rounds of the other-wire paths, each gateway run paired with a referee run (in_turn: ABBA): the table
    # gives medians (the machine drifts by ±5 % between runs, as much as the gaps being judged).
    rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
    conns = int(os.environ.get("BENCH_CONNECTIONS", "32"))
    redis_url = os.environ.get("KEYRELAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    backends = ["memory"] + (["redis"] if redis_up(redis_url) else [])
    tmp = Path(tempfile.mkdtemp(prefix="keyrelay-bench-"))
    mock_port, gw_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(pinned(1, [PY, "-m", "keyrelay.testing.mock_upstream", "--port", str(mock_port)]))
        )
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        config = tmp / "keyrelay.yaml"
        config.write_text((ROOT / "bench" / "keyrelay-bench.yaml").read_text().replace("18000", str(mock_port)))
        db = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        make_key = [PY, str(ROOT / "bench" / "make_key.py"), db]
        key = subprocess.run(make_key, check=True, capture_output=True, text=True).stdout.strip()
        rows = []
        wire_rows: list[tuple[str, bool, dict[str, float], dict[str, float]]] = []
        paired: dict[tuple[str, bool], list[tuple[float, float]]] = {}  # (path, stream) → [(gateway, referee) µs]
        referee_proc = Referee(mock_port, conns, seconds) if REFEREE.exists() else None
        firsts = []
        for backend in backends:
            env = {**os.environ, "KEYRELAY_LOG_LEVEL": "warning"}
            env.pop("KEYRELAY_REDIS_URL", None)
            if backend == "redis":
                env["KEYRELAY_REDIS_URL"] = redis_url
                env["KEYRELAY_REDIS_PREFIX"] = f"kr-bench-{os.getpid()}"
            gateway_proc = subprocess.Popen(gateway_cmd(db, gw_port, config), env=env)
            procs.append(gateway_proc)
            wait_http(f"http://127.0.0.1:{gw_port}/healthz")
            direct_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
            gateway_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            if backend == "memory":
                # Before the load runs: afterwards the gateway spends seconds writing their usage records.
                for framing, model in FRAMINGS:
                    firsts.append((framing, *ttfb(direct_url, gateway_url, key, model)))
            for stream in (False, True):
                direct = load(direct_url, "x", "gpt-4o-mini", stream, conns, seconds)
                # The gateway's own CPU per request: steadier than req/s on a machine shared with others.
                gateway = measured(gateway_proc, gateway_url, key, "gpt-4o-mini", stream, conns, seconds)
                rows.append((backend, stream, direct, gateway))
            if backend == "redis" and referee_proc is not None:
                # The Redis rows above are one run each, which this VM's drift (±10 %) can move past the targets:
                # also paired with referee runs, ``rounds`` times, like the other paths.
                for round_no in range(rounds):
                    for stream in (False, True):
                        gateway, ref = in_turn(
                            round_no,
                            partial(measured, gateway_proc, gateway_url, key, "gpt-4o-mini", stream, conns, seconds),
                            partial(referee_proc.measure, stream),
                        )
                        paired.setdefault(("OpenAI, Redis limits", stream), []).append(
                            (gateway["cpu_us"], ref["cpu_us"])
                        )
            if backend == "memory":
                scenarios = [("OpenAI", "openai", "/v1/chat/completions", "gpt-4o-mini", "openai", "")]
                scenarios += list(WIRE_SCENARIOS) if referee_proc is not None else []
                for round_no in range(rounds):
                    for label, wire, path, model, direct_wire, direct_path in scenarios:
                        for stream in (False, True):
                            direct = {}
                            if round_no == 0 and direct_path:
                                url = f"http://127.0.0.1:{mock_port}{with_method(direct_path, stream)}"
                                direct = load(url, "x", model, stream, conns, seconds, direct_wire)
                            url = f"http://127.0.0.1:{gw_port}{with_method(path, stream)}"
                            run = partial(measured, gateway_proc, url, key, model, stream, conns, seconds, wire)
                            if referee_proc is not None:
                                gateway, ref = in_turn(round_no, run, partial(referee_proc.measure, stream))
                                paired.setdefault((label, stream), []).append((gateway["cpu_us"], ref["cpu_us"]))
                            else:
                                gateway = run()
                            if round_no == 0 and direct_path:
                                wire_rows.append((label, stream, direct, gateway))
            gateway_proc.terminate()
            gateway_proc.wait(timeout=15)
            procs.remove(gateway_proc)
        referee = {stream: referee_proc.measure(stream) for stream in (False, True)} if referee_proc else {}
        if referee_proc is not None:
            referee_proc.stop()
        rotation = (
            key_rotation(db, tmp / "bench.db", gw_port, config, key, tmp, conns, seconds, rounds)
            if ROTATION_KEYS
            else []
        )
        admission_cmd = [
            PY,
            str(ROOT / "bench" / "admission.py"),
            *(["--redis", redis_url] if "redis" in backends else []),
        ]
        admission = subprocess.run(admission_cmd, check=True, capture_output=True, text=True).stdout
        protocol_cmd = pinned(0, [PY, str(ROOT / "bench" / "http_protocol.py")])
        protocols = subprocess.run(protocol_cmd, check=True, capture_output=True, text=True).stdout
        lines = [
            f"### make bench — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {conns} connections, {seconds:g} s",
            "",
            "| limits | mode | direct req/s | gateway req/s | direct p50/p99 ms | gateway p50/p99 ms | added p50 ms "
            "| gateway CPU µs/request | ÷ referee CPU | errors |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]

        def vs_referee(stream: bool, cpu_us: float) -> str:
            """Referee CPU per request ÷ this path's: its throughput ratio on one saturated core."""
            ref = referee.get(stream)
            return f"{ref['cpu_us'] / cpu_us:.2f}×" if ref and cpu_us else "–"

        for backend, stream, d, g in rows:
            lines.append(
                f"| {backend} | {'stream' if stream else 'non-stream'} | {d['req_s']:.0f} | {g['req_s']:.0f} | "
                f"{d['p50_ms']:.2f}/{d['p99_ms']:.2f} | {g['p50_ms']:.2f}/{g['p99_ms']:.2f} | "
                f"{g['p50_ms'] - d['p50_ms']:.2f} | {g['cpu_us']:.0f} | {vs_referee(stream, g['cpu_us'])} | "
                f"{int(g['errors'])} |"
            )
        for stream, r in referee.items():
            lines.append(
                f"| referee passthrough | {'stream' if stream else 'non-stream'} | – | {r['req_s']:.0f} | – | "
                f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f} | – | {r['cpu_us']:.0f} | 1.00× | {int(r['errors'])} |"
            )
        lines += rotation
        lines += [
            "",
            "Other wires (memory limits), each against calling the same upstream wire of the mock directly:",
            "",
            "| path | mode | direct req/s | gateway req/s | gateway p50/p99 ms | gateway CPU µs/request "
            "| ÷ referee CPU | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, stream, d, g in wire_rows:
            lines.append(
                f"| {label} | {'stream' if stream else 'non-stream'} | {d['req_s']:.0f} | {g['req_s']:.0f} | "
                f"{g['p50_ms']:.2f}/{g['p99_ms']:.2f} | {g['cpu_us']:.0f} | {vs_referee(stream, g['cpu_us'])} | "
                f"{int(g['errors'])} |"
            )
        if paired:
            lines += [
                "",
                f"Each path paired with a referee run made right after it (right before it in odd rounds), {rounds} "
                "round(s) (BENCH_ROUNDS), medians:",
                "",
                "| path | mode | gateway CPU µs/request | referee CPU µs/request | ÷ referee (median of pairs) | pairs |",
                "|---|---|---|---|---|---|",
            ]
            for (label, stream), pairs in paired.items():
                g_us, r_us, ratio = median_pairs(pairs)
                mode = "stream" if stream else "non-stream"
                lines.append(f"| {label} | {mode} | {g_us:.0f} | {r_us:.0f} | {ratio:.2f}× | {len(pairs)} |")
        lines += [
            "",
            "Time to first byte of a paced stream (20 ms to the first event), one request at a time, direct and "
            "through the gateway in turn, by the upstream's SSE line endings (bench/ttfb.py, memory limits):",
            "",
            "| framing | direct p50/p90 ms | gateway p50/p90 ms | added p50 ms |",
            "|---|---|---|---|",
        ]
        for framing, d, g in firsts:
            lines.append(
                f"| {framing} | {d['p50_ms']:.2f}/{d['p90_ms']:.2f} | {g['p50_ms']:.2f}/{g['p90_ms']:.2f} | "
                f"{g['p50_ms'] - d['p50_ms']:.2f} |"
            )
        lines += ["", "Admission alone (bench/admission.py, every limit set):", "", "```json", admission.strip(), "```"]
        lines += [
            "",
            "The HTTP server protocol alone (bench/http_protocol.py, µs per request, one event loop, no sockets):",
            "",
            "```json",
            protocols.strip(),
            "```",
        ]
        table = "\n".join(lines) + "\n"
        sys.stdout.write(table)
        with (ROOT / "docs" / "benchmarks.md").open("a") as fh:
            fh.write("\n" + table)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
