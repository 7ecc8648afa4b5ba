"""`make bench-load`: concurrent devices stream against the plain and the Ray engine on loopback.

For each engine (plain; Ray Serve with 2 replicas, batching on and off) one daemon, and for
each number of devices (1, 4, 16, 64) a window: each device holds its own channel and one
`InferStream` with one frame in flight, sending real fmnist-vgg feature maps (scheme 3:16:4
by default) with fresh request ids. Reports throughput, p50/p99, errors, the Ray/plain p50
ratio, the daemon's own time per frame (front, decode, tail: where the time goes) and the
batch sizes seen. The daemon's counters must agree with what the clients counted.
"""
from __future__ import annotations

import argparse
import queue
import socket
import urllib.request
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.common import RunLoad, header, notes_line, write
from cloud.daemon import CloudDaemon
from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.models import build_model
from planner.scheme import Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of the daemon's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def answered(samples: dict) -> float:
    return samples.get(("coinfer_requests_total", (("code", "OK"), ("method", "InferStream"))), 0.0)


def client_loop(address: str, frames: list[pb.InferRequest], stop: threading.Event, cid: int,
                latencies: list[float], errors: list[str]) -> None:
    q: queue.Queue = queue.Queue()
    with CloudClient(ClientConfig(address, timeout_s=60)) as c:
        stream = c.infer_stream(iter(q.get, None), timeout_s=3600)
        n = 0
        try:
            while not stop.is_set():
                req = pb.InferRequest()
                req.CopyFrom(frames[n % len(frames)])
                req.request_id = f"load-{cid}-{n}"
                t0 = time.perf_counter()
                q.put(req)
                resp = next(stream)
                latencies.append(time.perf_counter() - t0)
                if resp.request_id != req.request_id:
                    errors.append(f"client {cid}: answer {resp.request_id} for {req.request_id}")
                n += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(f"client {cid}: {e}")
        finally:
            q.put(None)


ENGINES = {   # name -> the daemon's engine flags
    "plain": [],
    "ray-batching": ["--engine", "ray", "--replicas", "2", "--batch-max-size", "8"],
    "ray-no-batching": ["--engine", "ray", "--replicas", "2", "--batch-max-size", "1"],
}
# a ~/.ray/auth_token would make Ray ask for token auth (Ray 2.60); the bench's own instance runs without
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
SERVER_SUMS = {"server": ("coinfer_request_seconds", (("method", "InferStream"),)),
               "decode": ("coinfer_decode_seconds", ()), "tail": ("coinfer_tail_seconds", ())}


@dataclass
class Point:
    engine: str
    clients: int
    frames: int
    seconds: float
    p50_s: float
    p99_s: float
    errors: list[str]
    server_ms: dict[str, float]           # mean per frame in the window: server, decode, tail
    batches: dict[int, float]             # batch size -> requests answered in one, in the window


def batch_counts(samples: dict) -> dict[int, float]:
    return {int(dict(labels)["batch_size"]): v for (name, labels), v in samples.items()
            if name == "coinfer_replica_batched_requests_total"}


def mean_ms(before: dict, after: dict) -> dict[str, float]:
    out = {}
    for key, (name, labels) in SERVER_SUMS.items():
        n = after.get((name + "_count", labels), 0) - before.get((name + "_count", labels), 0)
        total = after.get((name + "_sum", labels), 0) - before.get((name + "_sum", labels), 0)
        out[key] = 1e3 * total / n if n else float("nan")
    return out


def run_point(engine: str, address: str, metrics_port: int, frames: list[pb.InferRequest], clients: int,
              warmup_s: float, seconds: float) -> tuple[Point, int]:
    """`clients` streams for warm-up + `seconds`; (the point measured, frames the clients counted)."""
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    threads = [threading.Thread(target=client_loop, args=(address, frames, stop, i, lat[i], errors))
               for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup_s)
    before, counts0, t0 = scrape(metrics_port), [len(x) for x in lat], time.perf_counter()
    time.sleep(seconds)
    counts1, elapsed, after = [len(x) for x in lat], time.perf_counter() - t0, scrape(metrics_port)
    stop.set()
    for t in threads:
        t.join(60)
    measured = np.concatenate([np.array(x[a:b]) for x, a, b in zip(lat, counts0, counts1)] + [np.zeros(0)])
    b0, b1 = batch_counts(before), batch_counts(after)
    point = Point(engine, clients, int(sum(counts1) - sum(counts0)), elapsed,
                  float(np.percentile(measured, 50)) if measured.size else float("nan"),
                  float(np.percentile(measured, 99)) if measured.size else float("nan"), errors,
                  mean_ms(before, after), {k: b1[k] - b0.get(k, 0) for k in b1 if b1[k] > b0.get(k, 0)})
    return point, sum(len(x) for x in lat)


def batch_text(batches: dict[int, float]) -> str:
    n = sum(batches.values())
    if not n:
        return "-"
    mean = sum(k * v for k, v in batches.items()) / n     # the batch a request ran in, on average
    return f"mean {mean:.2f}, max {max(batches)}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    ap.add_argument("--clients", default="1,4,16,64", help="comma-separated numbers of concurrent devices")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured time per point, after warm-up")
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)}")
    ap.add_argument("--scheme", default="3:16:4")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    engines = [e.strip() for e in args.engines.split(",")]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        ap.error(f"--engines: unknown {unknown}; expected some of {list(ENGINES)}")
    load = RunLoad()
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    model = build_model("fmnist-vgg")
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", None)
    images = load_fashion_mnist("test")[0][:256].numpy()
    frames = [runner.prepare(Scheme.parse(args.scheme), img)[0] for img in images]
    points: list[Point] = []
    checks: list[str] = []
    for engine in engines:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            metrics_port = sock.getsockname()[1]
        daemon = CloudDaemon(["--model", "fmnist-vgg", "--profile-repeats", "1", "--metrics-port", str(metrics_port),
                              *ENGINES[engine]], env=RAY_ENV, drain_stderr=True)
        with daemon as cloud:
            rss_warm, client_total = None, 0
            for n in counts:
                point, counted = run_point(engine, cloud.address, metrics_port, frames, n, args.warmup_s, args.seconds)
                points.append(point)
                client_total += counted
                rss_warm = rss_warm or rss_bytes(cloud.proc.pid)
            rss_end = rss_bytes(cloud.proc.pid)
            final = scrape(metrics_port)
        server_total = int(answered(final))
        refused = int(sum(v for (name, labels), v in final.items()
                          if name == "coinfer_requests_total" and ("code", "OK") not in labels))
        agree = server_total == client_total and refused == 0
        checks.append(f"- {engine}: clients counted {client_total} answers, the daemon's "
                      f"coinfer_requests_total{{InferStream, OK}} {server_total}, other codes {refused} "
                      f"({'agree' if agree else 'DISAGREE'}); front RSS {rss_warm / 2**20:.0f} MiB after the first "
                      f"warm-up, {rss_end / 2**20:.0f} MiB at the end")
    plain = {p.clients: p for p in points if p.engine == "plain"}
    lines = header("Load: concurrent streaming devices against the plain and the Ray engine, loopback",
                   f"make bench-load  (python -m bench.load --clients {args.clients} --seconds {args.seconds:g} "
                   f"--warmup-s {args.warmup_s:g})", load)
    lines += [f"Scheme {args.scheme} on fmnist-vgg, one frame in flight per device (one stream each), "
              f"{args.warmup_s:g} s warm-up then {args.seconds:g} s measured per point; devices, the front and "
              f"the Ray replicas (2, one CPU each) all on this one machine. Server columns are means per frame "
              f"over the window from the daemon's histograms: the front's time per frame, and decode and tail "
              f"(a batched tail's time is the batch's). Total run {time.perf_counter() - t_start:.0f} s.", "",
              "| engine | devices | frames | throughput (frames/s) | p50 (ms) | p99 (ms) | errors | p50 / plain | "
              "server (ms) | decode (ms) | tail (ms) | batch sizes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in points:
        base = plain.get(p.clients)
        ratio = f"{p.p50_s / base.p50_s:.2f}x" if base is not None and p.engine != "plain" else "-"
        lines.append(f"| {p.engine} | {p.clients} | {p.frames} | {p.frames / p.seconds:.1f} | {p.p50_s * 1e3:.2f} | "
                     f"{p.p99_s * 1e3:.2f} | {len(p.errors)} | {ratio} | {p.server_ms['server']:.2f} | "
                     f"{p.server_ms['decode']:.2f} | {p.server_ms['tail']:.2f} | {batch_text(p.batches)} |")
    at16 = [(p.engine, p.p50_s / plain[16].p50_s) for p in points if p.clients == 16 and p.engine != "plain"
            and 16 in plain]
    lines += [""] + [f"Target p50 at 16 devices within 1.5x of plain, {e}: {r:.2f}x "
                     f"({'met' if r <= 1.5 else 'NOT met'})." for e, r in at16]
    errors = [e for p in points for e in p.errors]
    lines += ["", "Counters against the clients' own counts (prometheus-client's parser):", "", *checks]
    lines += [f"- error: {e}" for e in errors[:5]]
    lines += ["", notes_line("load")]
    write("load", lines)
    return 0 if not errors and all("agree" in c for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
