"""`make bench-load`: N concurrent device clients stream against one cloud daemon on loopback.

Each client holds its own channel and one `InferStream` with one frame in flight, sending
real fmnist-vgg feature maps (scheme 3:16:4 by default) with fresh request ids, for a
fixed time. Reports throughput, latency percentiles, errors, and the server's resident
memory after warm-up and at the end. The daemon's /metrics is scraped during the run and
after it: its frame counters must agree with what the clients counted.
"""
from __future__ import annotations

import argparse
import queue
import socket
import urllib.request
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.common import RunLoad, header, write
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured time after warm-up")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--scheme", default="3:16:4")
    args = ap.parse_args(argv)
    load = RunLoad()
    torch.set_num_threads(1)
    model = build_model("fmnist-vgg")
    runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", None)
    images = load_fashion_mnist("test")[0][:256].numpy()
    frames = [runner.prepare(Scheme.parse(args.scheme), img)[0] for img in images]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics_port = sock.getsockname()[1]
    with CloudDaemon(["--model", "fmnist-vgg", "--profile-repeats", "1", "--metrics-port", str(metrics_port)]) as cloud:
        stop = threading.Event()
        lat: list[list[float]] = [[] for _ in range(args.clients)]
        errors: list[str] = []
        threads = [threading.Thread(target=client_loop, args=(cloud.address, frames, stop, i, lat[i], errors))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.warmup_s)
        rss_warm = rss_bytes(cloud.proc.pid)
        counts0 = [len(x) for x in lat]
        t0 = time.perf_counter()
        time.sleep(args.seconds / 2)
        during = scrape(metrics_port)                     # under full load
        clients_during = sum(len(x) for x in lat)
        time.sleep(args.seconds / 2)
        counts1 = [len(x) for x in lat]
        elapsed = time.perf_counter() - t0
        rss_end = rss_bytes(cloud.proc.pid)
        stop.set()
        for t in threads:
            t.join(60)
        final = scrape(metrics_port)                      # every client has stopped
        measured = np.concatenate([np.array(x[a:b]) for x, a, b in zip(lat, counts0, counts1)])
    done = int(sum(counts1) - sum(counts0))
    client_total = sum(len(x) for x in lat)
    server_total = int(answered(final))
    hist = int(final.get(("coinfer_request_seconds_count", (("method", "InferStream"),)), 0))
    tails = int(final.get(("coinfer_tail_seconds_count", ()), 0))
    refused = int(sum(v for (name, labels), v in final.items()
                      if name == "coinfer_requests_total" and ("code", "OK") not in labels))
    agree = server_total == client_total == hist == tails and refused == 0
    growth = (rss_end - rss_warm) / rss_warm
    lines = header(f"Load: {args.clients} streaming clients, one cloud daemon, loopback",
                   f"make bench-load  (python -m bench.load --clients {args.clients} --seconds {args.seconds:g})",
                   load)
    lines += [f"Scheme {args.scheme} on fmnist-vgg, one frame in flight per client, {args.warmup_s:g} s warm-up, "
              f"{elapsed:.1f} s measured; clients and server on this one machine.", "",
              "| clients | frames | throughput (frames/s) | p50 latency (ms) | p99 latency (ms) | errors | server RSS after warm-up (MiB) | at end (MiB) | growth |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {args.clients} | {done} | {done / elapsed:.1f} | {np.percentile(measured, 50) * 1e3:.2f} | "
              f"{np.percentile(measured, 99) * 1e3:.2f} | {len(errors)} | {rss_warm / 2**20:.1f} | "
              f"{rss_end / 2**20:.1f} | {growth:+.1%} |", "",
              f"Targets: errors 0 ({'met' if not errors else 'NOT met'}), RSS growth under 10% "
              f"({'met' if growth < 0.10 else 'NOT met'})."]
    lines += ["", "Metrics scraped from the daemon's /metrics (prometheus-client's parser), against the clients' own "
              "counts:", "",
              "| when | clients counted | coinfer_requests_total{InferStream, OK} | request_seconds count | "
              "tail_seconds count | other codes |", "|---|---:|---:|---:|---:|---:|",
              f"| mid-run (under load) | {clients_during} | {int(answered(during))} | - | - | - |",
              f"| after the clients stopped | {client_total} | {server_total} | {hist} | {tails} | {refused} |", "",
              f"Counters agree with the clients ({'met' if agree else 'NOT met'}); mid-run the two reads are "
              f"a few milliseconds apart while {args.clients} frames are in flight."]
    lines += [f"- error: {e}" for e in errors[:5]]
    write("load", lines)
    return 0 if not errors and agree else 1


if __name__ == "__main__":
    sys.exit(main())
