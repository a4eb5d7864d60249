"""What the server layer's limits cost: uvicorn's httptools protocol against `EdgeHttpProtocol`.

Both serve the baseline app (`benchmarks/baseline_app.py`) in one uvicorn process on core 0
(uvloop), driven by wrk on core 1; the rounds alternate plain / edge so that a noisy neighbour
hits both alike. Reported per protocol: the median over rounds of req/s and p99.

    python -m benchmarks.edge_bench [--rounds 3] [--seconds 10]
    python -m benchmarks.edge_bench --micro [--requests 200000]

`--micro` takes the network and the app out: one process feeds keep-alive requests straight into
each protocol (a fake transport, an ASGI app that answers at once) and reports the time per
request, best of five runs. On a shared machine it is the steadier of the two measurements.
"""

from __future__ import annotations

import argparse
import asyncio
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
from typing import Any

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


REQUEST = (
    b"POST /api/v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer " + b"x" * 300 + b"\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n"
    + BODY.encode()
)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.responses = 0
        self._closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:9]) == b"HTTP/1.1 ":
            self.responses += 1

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _micro_run(kind: str, requests: int) -> float:
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from cnop.common.config import Settings
    from cnop.gateway.server import EdgeHttpProtocol, server_config

    if kind == "edge":
        config: uvicorn.Config = server_config(_answer, Settings(), host=HOST, port=0, log_level="warning")
        protocol_class: type[HttpToolsProtocol] = EdgeHttpProtocol
    else:
        config = uvicorn.Config(_answer, http="httptools", log_level="warning")
        protocol_class = HttpToolsProtocol
    config.load()
    loop = asyncio.get_running_loop()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    started = time.perf_counter()
    for i in range(requests):
        protocol.data_received(REQUEST)
        while transport.responses <= i:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return elapsed / requests * 1e6


def micro(requests: int) -> None:
    import uvloop

    best: dict[str, float] = {}
    for _ in range(5):
        for kind in ("plain", "edge"):
            us = uvloop.run(_micro_run(kind, requests))
            best[kind] = min(best.get(kind, us), us)
            print(f"{kind:5} {us:6.2f} us/request", flush=True)
    print(f"\nkeep-alive requests fed to the protocol, {requests} per run, best of 5")
    print("| protocol | us per request |\n|---|---:|")
    print(f"| uvicorn httptools | {best['plain']:.2f} |\n| EdgeHttpProtocol | {best['edge']:.2f} |")
    print(f"edge - plain: {best['edge'] - best['plain']:+.2f} us per request")


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
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    if args.micro:
        micro(args.requests)
        return
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
