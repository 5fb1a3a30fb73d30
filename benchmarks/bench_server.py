"""Throughput and latency of the HTTP API under 20 concurrent clients, next to its baseline:
one client posting the same painting sequentially.

    python benchmarks/bench_server.py [--clients 20] [--seconds 30] [--beam 1] [--model DIR]

The server runs in its own process (`artcap.server.serve`) on 127.0.0.1 with a free port, so
the clients' Python threads do not share its GIL; everything stops by itself.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED_WIKIART = ROOT.parent / "shared" / "data" / "artemis-mini" / "wikiart"
MAX_REQUESTS_PER_CLIENT = 10_000  # a bound on every loop, whatever the clock says


def pick_painting() -> Path:
    paintings = sorted(SHARED_WIKIART.glob("*/*.jpg"))
    if paintings:
        return paintings[0]
    example = ROOT / "examples" / "landscape.jpg"
    if example.is_file():
        return example
    sys.exit(f"no painting to post: neither {SHARED_WIKIART} nor {example} exists")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int) -> subprocess.Popen:
    code = f"from artcap.server import serve; serve({model!r}, host='127.0.0.1', port={port})"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return wait_until_healthy(process, port, 120, lambda: process.stderr.read().decode())


def wait_until_healthy(process: subprocess.Popen, port: int, seconds: float, output) -> subprocess.Popen:
    """Wait for the server's /healthz; exit with its last output (`output()`) if it dies or stays silent."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}: {output()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit(f"server did not answer /healthz within {seconds:g} s")


def run_clients(url: str, image: bytes, clients: int, seconds: float, beam: int) -> tuple[list[float], int, float]:
    """`clients` threads post until the deadline; return latencies (s), error count, wall time."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                try:
                    ok = http.post(url, files={"image": ("painting.jpg", image)}, data={"beam": str(beam)}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - started
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - started


def report(label: str, latencies: list[float], errors: int, wall: float) -> None:
    if not latencies:
        print(f"{label:<24} requests 0, errors {errors}")
        return
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    print(
        f"{label:<24} requests {len(latencies) + errors:5d}  errors {errors:3d}  "
        f"throughput {len(latencies) / wall:6.2f} req/s  "
        f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--beam", type=int, default=1, help="1 = greedy only (the API default); 3 = what the page asks")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    args = parser.parse_args()

    painting = pick_painting()
    image = painting.read_bytes()
    port = free_port()
    server = start_server(args.model, port)
    url = f"http://127.0.0.1:{port}/v1/captions"
    try:
        model = httpx.get(f"http://127.0.0.1:{port}/healthz").json()["model"]
        print(f"model {model}, painting {painting.name} ({len(image):,} bytes), beam {args.beam}, "
              f"{args.clients} clients for {args.seconds:g} s, baseline 1 client for {args.baseline_seconds:g} s")
        run_clients(url, image, 1, 2.0, args.beam)  # warm-up: first-call allocations, lazy imports
        baseline = run_clients(url, image, 1, args.baseline_seconds, args.beam)
        concurrent = run_clients(url, image, args.clients, args.seconds, args.beam)
        report("baseline: 1 client", *baseline)
        report(f"{args.clients} concurrent clients", *concurrent)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
