"""Server memory under a burst of decompression-heavy uploads, next to its target.

    python benchmarks/bench_server_memory.py [--uploads 24] [--side 6300] [--threads N] [--json]

A flat RGB PNG of side x side pixels (made here with Pillow: ~131 KB on the wire, 119 MB
decoded at 6300 px) is posted by `--uploads` clients at the same moment to a real server
process (`artcap.server.serve`) on 127.0.0.1. It prints the server's resident memory growth at
its peak (the kernel's high-water mark, reset just before the burst) and a few seconds after,
and the latency of every request, beside the target: peak growth < 600 MB, every answer a 200
or a JSON 413/422/503 well within the request timeout, and memory back near its start.
Linux only (it reads /proc). Exit status 0 when the target is met, 1 when not.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from bench_server import wait_until_healthy
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000
TARGET_PEAK_GROWTH_MB = 600
TARGET_AFTER_GROWTH_MB = 150  # "back near its start": allocator and thread-stack slack
REQUEST_TIMEOUT_S = 30.0  # the server's default request_timeout_s
ANSWERS_ALLOWED = {200, 413, 422, 503}


def flat_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (181, 140, 92)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def small_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((320, 240)).save(buffer, "JPEG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, threads: int | None, serve_from: str, log: Path) -> subprocess.Popen:
    code = f"from {serve_from} import serve; serve(None, host='127.0.0.1', port={port}" + (
        f", threads={threads})" if threads else ")"
    )
    with open(log, "wb") as log_file:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen([sys.executable, "-c", code], stdout=log_file, stderr=subprocess.STDOUT)
    return wait_until_healthy(process, port, 180, log.read_text)


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") * 1024 / MB


def reset_peak(pid: int) -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakSampler(threading.Thread):
    """RSS sampled every 10 ms: a fallback where VmHWM cannot be reset."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)


def post(url: str, image: bytes, name: str) -> tuple[int, float, str, dict]:
    """(status, seconds, problem or "", the server's timing_ms of a 200)."""
    started = time.perf_counter()
    try:
        response = httpx.post(url, files={"image": (name, image)}, timeout=3 * REQUEST_TIMEOUT_S)
    except httpx.HTTPError as err:
        return -1, time.perf_counter() - started, f"{type(err).__name__}: {err}", {}
    elapsed = time.perf_counter() - started
    is_json = response.headers.get("content-type", "").startswith("application/json")
    problem = "" if is_json else f"not JSON: {response.text[:200]}"
    if response.status_code != 200 and is_json and set(response.json()) != {"error"}:
        problem = f"error body is not {{'error': ...}}: {response.text[:200]}"
    timing = response.json().get("timing_ms", {}) if response.status_code == 200 and is_json else {}
    return response.status_code, elapsed, problem, timing


def burst(url: str, image: bytes, uploads: int) -> list[tuple[int, float, str, dict]]:
    results: list[tuple[int, float, str, dict]] = [(-1, 0.0, "not run", {})] * uploads
    gate = threading.Barrier(uploads)

    def client(index: int) -> None:
        gate.wait()  # all at the same moment
        results[index] = post(url, image, f"flat-{index}.png")

    workers = [threading.Thread(target=client, args=(i,)) for i in range(uploads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure(uploads: int, side: int, threads: int | None, serve_from: str, settle_s: float) -> dict:
    image = flat_png(side)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        server = start_server(port, threads, serve_from, log)
        try:
            url = f"http://127.0.0.1:{port}/v1/captions"
            post(url, small_jpeg(), "warm-up.jpg")  # first-call allocations are not the burst's
            start = rss_mb(server.pid)
            hwm_reset = reset_peak(server.pid)
            sampler = PeakSampler(server.pid)
            sampler.start()
            wall = time.perf_counter()
            results = burst(url, image, uploads)
            wall = time.perf_counter() - wall
            sampler.stop.set()
            sampler.join()
            peak = max(sampler.peak, status_kb(server.pid, "VmHWM") * 1024 / MB if hwm_reset else 0.0)
            time.sleep(settle_s)
            after = rss_mb(server.pid)
        finally:
            server.kill()
            server.wait()
    latencies = [elapsed for _, elapsed, _, _ in results]
    timings = [timing for _, _, _, timing in results if timing]
    return {
        "uploads": uploads, "side": side, "png_bytes": len(image), "decoded_mb": side * side * 3 / MB,
        "threads": threads, "serve_from": serve_from,
        "rss_start_mb": round(start, 1), "peak_growth_mb": round(peak - start, 1),
        "after_growth_mb": round(after - start, 1), "p50_s": round(percentile(latencies, 0.5), 2),
        "p95_s": round(percentile(latencies, 0.95), 2), "max_s": round(max(latencies), 2), "wall_s": round(wall, 2),
        "statuses": sorted({status for status, _, _, _ in results}),
        "problems": sorted({problem for _, _, problem, _ in results if problem})[:5],
        "server_ms_p50": {key: round(percentile([t[key] for t in timings], 0.5)) for key in timings[0]} if timings else {},
    }


def verdict(result: dict) -> dict[str, bool]:
    return {
        f"peak growth < {TARGET_PEAK_GROWTH_MB} MB": result["peak_growth_mb"] < TARGET_PEAK_GROWTH_MB,
        f"after growth < {TARGET_AFTER_GROWTH_MB} MB": result["after_growth_mb"] < TARGET_AFTER_GROWTH_MB,
        f"every answer 200/413/422/503 JSON": set(result["statuses"]) <= ANSWERS_ALLOWED and not result["problems"],
        f"slowest < {REQUEST_TIMEOUT_S:g} s timeout": result["max_s"] < REQUEST_TIMEOUT_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=24, help="concurrent uploads (default 24)")
    parser.add_argument("--side", type=int, default=6300, help="the flat PNG's side in pixels (default 6300)")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before the 'after' RSS")
    parser.add_argument("--serve-from", default="artcap.server", help="module to import serve() from")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if not Path("/proc/self/status").is_file():
        sys.exit("this benchmark reads /proc: Linux only")
    result = measure(args.uploads, args.side, args.threads, args.serve_from, args.settle)
    checks = verdict(result)
    result["target_met"] = all(checks.values())
    if args.json:
        print(json.dumps(result))
        return 0 if result["target_met"] else 1
    print(f"{args.uploads} concurrent uploads of a flat {args.side}x{args.side} PNG "
          f"({result['png_bytes'] / 1000:.0f} KB, {result['decoded_mb']:.0f} MB decoded), "
          f"{os.cpu_count()} CPUs, server from {args.serve_from}")
    print(f"  RSS at start        {result['rss_start_mb']:8.0f} MB")
    print(f"  peak growth         {result['peak_growth_mb']:8.0f} MB   (target < {TARGET_PEAK_GROWTH_MB} MB)")
    print(f"  growth afterwards   {result['after_growth_mb']:8.0f} MB   (target < {TARGET_AFTER_GROWTH_MB} MB)")
    print(f"  latency p50 / p95 / max  {result['p50_s']} / {result['p95_s']} / {result['max_s']} s   "
          f"(target: all < {REQUEST_TIMEOUT_S:g} s)")
    print(f"  statuses {result['statuses']}  problems {result['problems'] or 'none'}")
    print(f"  server timing_ms p50 {result['server_ms_p50']}  (CPU load average now {os.getloadavg()[0]:.1f})")
    for name, ok in checks.items():
        print(f"  {'met ' if ok else 'MISSED'}  {name}")
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
