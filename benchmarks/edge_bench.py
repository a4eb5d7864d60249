"""What the server layer's limits cost: uvicorn's httptools protocol against `EdgeHttpProtocol`.

Both serve the baseline app (`benchmarks/baseline_app.py`) in one uvicorn process on core 0
(uvloop), driven by wrk on core 1; the rounds alternate plain / edge so that a noisy neighbour
hits both alike. Reported per protocol: the median over rounds of req/s and p99.

    make bench-edge            # or: python -m benchmarks.edge_bench [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
BODY = '{"order_type":"market_buy","asset_id":"BTC","quantity":"0.001"}'
LUA = f"""
wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {"x" * 300}"
"""


def serve(kind: str, port: int) -> None:
    import uvicorn

    from benchmarks.baseline_app import create_app
    from cnop.common.config import Settings
    from cnop.gateway.server import server_config

    app = create_app()
    common = {"host": HOST, "port": port, "loop": "uvloop", "log_level": "warning", "access_log": False}
    if kind == "edge":
        config: uvicorn.Config = server_config(app, Settings(), **common)
    else:
        config = uvicorn.Config(app, http="httptools", **common)
    uvicorn.Server(config).run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise SystemExit("server did not start")


def run_round(kind: str, seconds: int, connections: int, script: Path) -> tuple[float, float]:
    port = free_port()
    command = ["taskset", "-c", "0", sys.executable, "-m", "benchmarks.edge_bench", "--serve", kind, str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, process)
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
             f"http://{HOST}:{port}/api/v1/orders"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99_match = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99_match is not None
    value, unit = float(p99_match.group(1)), p99_match.group(2)
    p99_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return rps, p99_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    script = Path(os.environ.get("TMPDIR", "/tmp")) / f"edge-bench-{os.getpid()}.lua"
    script.write_text(LUA)
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "edge": []}
    try:
        for _ in range(args.rounds):
            for kind in ("plain", "edge"):
                results[kind].append(run_round(kind, args.seconds, args.connections, script))
                print(f"{kind:5} req/s {results[kind][-1][0]:8.0f}  p99 {results[kind][-1][1]:7.1f} ms", flush=True)
    finally:
        script.unlink(missing_ok=True)
    rounds = f"{args.connections} connections, {args.seconds} s x {args.rounds}"
    print(f"\nPOST /api/v1/orders to the baseline app, {rounds}")
    print("| protocol | median req/s | median p99 ms |\n|---|---:|---:|")
    for kind, rows in results.items():
        rps = statistics.median(r for r, _ in rows)
        p99 = statistics.median(p for _, p in rows)
        print(f"| {'uvicorn httptools' if kind == 'plain' else 'EdgeHttpProtocol'} | {rps:.0f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
