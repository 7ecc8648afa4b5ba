"""`make bench`: codec throughput and bytes (bench.codec) and per-request overhead on loopback.

Overhead = device round trip - (cloud decode + tail), i.e. what gRPC, serialization and
the loopback cost per request, for unary `Infer` and for `InferStream` (one frame in
flight, and pipelined).
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from bench.common import RunLoad, header, write
from cloud.daemon import CloudDaemon
from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.models import build_model
from planner.scheme import Scheme

SCHEME = "3:16:4"
REQUESTS = 400


def overhead_rows() -> list[str]:
    torch.set_num_threads(1)
    images = load_fashion_mnist("test")[0][:REQUESTS].numpy()
    model = build_model("fmnist-vgg")
    rows = []
    with CloudDaemon(["--model", "fmnist-vgg", "--profile-repeats", "1", "--threads", "1"]) as cloud, \
            CloudClient(ClientConfig(cloud.address)) as client:
        runner = DeviceRunner(TorchHeads(model), "fmnist-vgg", client)
        frames = [runner.prepare(Scheme.parse(SCHEME), img)[0] for img in images]

        def fresh(phase: str) -> list:
            """The frames under new request ids: the cloud caches answers by id."""
            out = []
            for i, f in enumerate(frames):
                r = type(f)()
                r.CopyFrom(f)
                r.request_id = f"{phase}-{i}"
                out.append(r)
            return out

        for r in fresh("warmup")[:50]:
            client.infer(r)
        reqs = fresh("unary")
        unary = []
        for r in reqs:
            resp, rtt = client.infer(r)
            unary.append((rtt, rtt - resp.decode_s - resp.tail_s))
        # stream, one frame in flight: a ping-pong over one InferStream
        import queue
        q: queue.Queue = queue.Queue()
        sent: dict[str, float] = {}
        stream = client.infer_stream(iter(q.get, None), timeout_s=600)
        ping = []
        for r in fresh("ping"):
            sent[r.request_id] = time.perf_counter()
            q.put(r)
            resp = next(stream)
            rtt = time.perf_counter() - sent[resp.request_id]
            ping.append((rtt, rtt - resp.decode_s - resp.tail_s))
        q.put(None)
        # pipelined: all frames queued, throughput
        t0 = time.perf_counter()
        n = sum(1 for _ in client.infer_stream(fresh("pipelined"), timeout_s=600))
        pipelined_s = (time.perf_counter() - t0) / n
        serial = fresh("serial")
        t0 = time.perf_counter()
        for r in serial:
            client.infer(r)
        serial_s = (time.perf_counter() - t0) / len(reqs)
    med = lambda xs, i: statistics.median(x[i] for x in xs) * 1e3  # noqa: E731
    rows += [f"Scheme {SCHEME} on fmnist-vgg, {REQUESTS} requests after 50 warm-up, one torch thread each side.", "",
             "| call | median round trip (ms) | median overhead (ms) | p90 overhead (ms) |",
             "|---|---:|---:|---:|"]
    for name, xs in (("unary Infer", unary), ("InferStream, one in flight", ping)):
        p90 = float(np.percentile([x[1] for x in xs], 90)) * 1e3
        rows.append(f"| {name} | {med(xs, 0):.3f} | {med(xs, 1):.3f} | {p90:.3f} |")
    rows += ["", f"Time per frame: unary back-to-back {serial_s * 1e3:.3f} ms, InferStream pipelined "
             f"{pipelined_s * 1e3:.3f} ms; pipelined / unary = {pipelined_s / serial_s:.2f}.",
             f"Target overhead <= 2 ms per request: unary {med(unary, 1):.3f} ms "
             f"({'met' if med(unary, 1) <= 2 else 'NOT met'})."]
    return rows


def main() -> int:
    load = RunLoad()
    rows = overhead_rows()
    lines = header("Runtime: per-request overhead on loopback", "make bench  (python -m bench.runtime)", load) + rows
    write("runtime", lines)
    try:
        from bench import codec as codec_bench
    except ImportError:
        return 0
    codec_bench.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
