"""`python -m bench.attack`: the attack matrix against one cloud daemon (TLS + token), on loopback.

Each attack runs against the same daemon, one after another; after each the server must
still answer (a health check and a real Infer, each within 1 s), every status must be one
the attack may get (never an OK to a bad request, never an unhandled status), and the
daemon's resident memory is read before and after. The fuzz row mutates every field of
real captured requests (seeded) and checks each answer against the engine run in this
process: the server may answer OK only where the engine does, with the same logits.
Writes bench/results/attack.md.

This module is long because the matrix is one table of attacks, each a short function run
against the same daemon; the fuzzing helpers live in bench.fuzz.
"""
from __future__ import annotations

import argparse
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import header, write
from bench.fuzz import DEFINED, Oracle, captured_requests, mutated
from bench.load import rss_bytes
from cloud.daemon import REPO, CloudDaemon
from device.client import ClientConfig, CloudClient, TLSSetupError
from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc

OK, INVALID, EXHAUSTED, UNAUTH, UNAVAILABLE = "OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", \
    "UNAVAILABLE"
LOG_BURST, LOG_RATE_PER_S = 50, 10.0       # cloud.trace.RefusalTrace defaults


class Target(CloudDaemon):
    """The daemon under attack: TLS, a token, metrics, its log in a file."""

    def __init__(self, workdir: Path):
        from tests.pki import ThrowawayPKI
        pki = ThrowawayPKI(workdir)
        cert, key = pki.issue("server", server=True)
        self.ca, self.token = pki.ca_path, "attack-token-0123456789"
        (workdir / "token").write_text(self.token + "\n")
        (workdir / "token").chmod(0o600)
        self.metrics_port = _free_port()
        self.log_path = workdir / "cloud.log"
        super().__init__(["--model", "fmnist-vgg", "--profile-repeats", "0", "--tls-cert", str(cert),
                          "--tls-key", str(key), "--token-file", str(workdir / "token"),
                          "--metrics-port", str(self.metrics_port)])

    def start(self) -> "Target":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"cloud did not start: {self.log_path.read_text()[-500:]}")
        self.address = line.split("listening on ", 1)[1].strip().replace("127.0.0.1", "localhost")
        return self

    @property
    def metadata(self):
        return (("authorization", f"Bearer {self.token}"),)

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(self.ca.read_bytes()))

    def client(self, timeout_s: float = 30.0) -> CloudClient:
        token = self.log_path.parent / "token"
        return CloudClient(ClientConfig(self.address, timeout_s=timeout_s, tls_ca=str(self.ca), token_file=str(token)))

    def log_lines(self) -> int:
        self._log.flush()
        return len(self.log_path.read_text().splitlines())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _code(call) -> str:
    try:
        call()
        return OK
    except grpc.RpcError as e:
        return e.code().name


@dataclass
class Outcome:
    calls: int = 0
    statuses: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)   # an OK to a bad request, an unhandled status...
    note: str = ""

    def expect(self, code: str, allowed: set[str], what: str) -> None:
        self.calls += 1
        self.statuses[code] += 1
        if code not in allowed:
            self.violations.append(f"{what}: {code}, expected {'/'.join(sorted(allowed))}")


# --- the attacks: each (target, frames, small) -> Outcome ----------------------------------

def fuzz(t: Target, reqs, oracle: Oracle, small: bool) -> Outcome:
    out, rng = Outcome(), np.random.default_rng(11)
    n = 80 if small else 600
    with t.client(timeout_s=30) as c:
        for i in range(n):
            req, fields = mutated(reqs[i % len(reqs)], rng, i)
            local = oracle.answer(req)
            try:
                resp, _ = c.infer(req)
                code = OK
            except grpc.RpcError as e:
                code, resp = e.code().name, None
            allowed = DEFINED | {OK} if local.code == OK else DEFINED
            out.expect(code, allowed, f"mutated {fields}")
            if code == OK and local.code == OK and not np.allclose(resp.logits, local.logits, atol=1e-4):
                out.violations.append(f"mutated {fields}: logits differ from the engine's")
    out.note = f"{n} requests, every field mutated"
    return out


def idle_streams(t: Target, reqs, oracle, small: bool) -> Outcome:
    out, n = Outcome(), 64 if small else 256
    channels = [t.channel() for _ in range(n // 32)]
    feeds = [queue.Queue() for _ in range(n)]
    calls = [pb_grpc.CoInferStub(channels[i % len(channels)]).InferStream(iter(q.get, None), timeout=300,
                                                                            metadata=t.metadata)
             for i, q in enumerate(feeds)]
    time.sleep(2.0)
    h, infer = still_answering(t)
    out.expect(OK if h < 1 and infer < 1 else f"slow (health {h:.2f} s, infer {infer:.2f} s)", {OK},
               f"{n} idle streams open")
    for q in feeds:
        q.put(None)
    for call in calls:
        out.expect(_code(lambda: list(call)), {OK}, "idle stream closed by its client")
    for ch in channels:
        ch.close()
    out.note = f"{n} streams open, no frame sent; then health and Infer"
    return out


def streaming_devices(t: Target, reqs, oracle, small: bool) -> Outcome:
    out, n = Outcome(), 16 if small else 64
    barrier = threading.Barrier(n, timeout=120)
    codes: list[str] = []

    def device(i: int) -> None:
        q: queue.Queue = queue.Queue()
        with t.channel() as ch:
            answers = pb_grpc.CoInferStub(ch).InferStream(iter(q.get, None), timeout=300, metadata=t.metadata)
            try:
                for k in range(3):
                    r = pb.InferRequest()
                    r.CopyFrom(reqs[(i + k) % len(reqs)])
                    r.request_id = f"dev-{i}-{k}"
                    q.put(r)
                    codes.append(OK if next(answers).request_id == r.request_id else "WRONG_ANSWER")
                    if k == 0:
                        barrier.wait()          # all streams open and answered at once
            except (grpc.RpcError, threading.BrokenBarrierError) as e:
                codes.append(e.code().name if isinstance(e, grpc.RpcError) else "STARVED")
            finally:
                q.put(None)

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(device, range(n)))
    for code in codes:
        out.expect(code, {OK}, "streamed frame")
    out.note = f"{n} devices, 3 frames each, all streams open at once"
    return out


def huge_ids(t: Target, reqs, oracle, small: bool) -> Outcome:
    out, size = Outcome(), (1 if small else 24) << 20
    with t.client(timeout_s=60) as c:
        for i in range(8):
            r = pb.InferRequest()
            r.CopyFrom(reqs[i % len(reqs)])
            r.request_id = str(i) * size
            out.expect(_code(lambda: c.infer(r)), {INVALID}, f"request id of {size} bytes")
    out.note = f"8 requests with a {size >> 20} MiB request id"
    return out


def cache_probe(t: Target, reqs, oracle, small: bool) -> Outcome:
    out = Outcome()
    with t.client() as c:
        for i in range(10 if small else 50):
            victim = pb.InferRequest()
            victim.CopyFrom(reqs[i % len(reqs)])
            victim.request_id = f"victim-{i}"
            answer, _ = c.infer(victim)
            other = pb.InferRequest()
            other.CopyFrom(reqs[(i + 1) % len(reqs)])
            other.request_id = victim.request_id
            invalid = pb.InferRequest()
            invalid.CopyFrom(victim)
            invalid.feature_map.height = 9999                  # no partition is that tall
            for what, r in (("empty", pb.InferRequest(request_id=victim.request_id)), ("invalid", invalid)):
                out.expect(_code(lambda: c.infer(r)), DEFINED, f"{what} request under a known id")
            theirs, _ = c.infer(other)
            out.expect(OK if list(theirs.logits) != list(answer.logits) or other.SerializeToString() ==
                       victim.SerializeToString() else "GOT_ANOTHERS_ANSWER", {OK}, "another request, known id")
    out.note = "known ids with empty, invalid and other requests"
    return out


def huge_side_data(t: Target, reqs, oracle, small: bool) -> Outcome:
    out = Outcome()
    with t.client() as c:
        for name, value in (("scales", 3e38), ("offsets", 3e38), ("offsets", -3e38), ("scales", 1e37)):
            for r0 in reqs[:4]:
                r = pb.InferRequest()
                r.CopyFrom(r0)
                if r.WhichOneof("input") != "feature_map":
                    continue
                side = getattr(r.feature_map, name)
                for k in range(len(side)):
                    side[k] = value
                out.expect(_code(lambda: c.infer(r)), {INVALID}, f"{name} = {value:g}")
    out.note = "offsets / scales near float32's limit"
    return out


def bombs(t: Target, reqs, oracle, small: bool) -> Outcome:
    out = Outcome()
    declared = zstandard.ZstdCompressor(write_content_size=True).compressobj(size=4 << 30)
    frames = {"declares 4 GiB": declared.compress(bytes(1024)) + declared.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)}
    for level in (1, 19):
        cobj = zstandard.ZstdCompressor(level=level, write_content_size=False).compressobj()
        frames[f"undeclared 64 MiB, level {level}"] = cobj.compress(bytes(64 << 20)) + cobj.flush()
    base = next(r for r in reqs if r.WhichOneof("input") == "feature_map")
    image = next(r for r in reqs if r.WhichOneof("input") == "image")
    with t.client() as c:
        for name, payload in frames.items():
            for r0, attr in ((base, "feature_map"), (image, "image")):
                r = pb.InferRequest()
                r.CopyFrom(r0)
                getattr(r, attr).payload = payload
                out.expect(_code(lambda: c.infer(r)), {INVALID}, f"{attr} bomb {name}")
    out.note = "zstd frames that expand to far more than the field may hold"
    return out


def oversize(t: Target, reqs, oracle, small: bool) -> Outcome:
    out = Outcome()
    with t.client() as c:
        r = pb.InferRequest(request_id="big", model="fmnist-vgg", image=pb.Image(payload=bytes(65 << 20)))
        for _ in range(2 if small else 4):
            out.expect(_code(lambda: c.stub.Infer(r, timeout=60, metadata=c.metadata)), {EXHAUSTED}, "65 MiB message")
    out.note = "messages over the 64 MiB limit"
    return out


def auth(t: Target, reqs, oracle, small: bool) -> Outcome:
    out = Outcome()
    cases = [((), UNAUTH), ((("authorization", "Bearer wrong"),), UNAUTH),
             ((("authorization", "Basic " + t.token),), UNAUTH),
             ((("authorization", "Bearer wrong"), ("authorization", f"Bearer {t.token}")), UNAUTH),
             ((("authorization", f"bearer {t.token}"),), OK)]
    with t.channel() as ch:
        stub = pb_grpc.CoInferStub(ch)
        for _ in range(5 if small else 20):
            for md, want in cases:
                out.expect(_code(lambda: stub.Probe(pb.ProbeRequest(response_bytes=1), timeout=10, metadata=md)),
                           {want}, f"authorization {[v.split()[0] for _, v in md]}")
    out.note = "no, wrong, Basic, two tokens; lower-case bearer (valid)"
    return out


def tls_mismatch(t: Target, reqs, oracle, small: bool) -> Outcome:
    out = Outcome()
    with grpc.insecure_channel(t.address) as ch:         # plaintext against TLS: no answer at all
        out.expect(_code(lambda: pb_grpc.CoInferStub(ch).Probe(pb.ProbeRequest(), timeout=3, metadata=t.metadata)),
                   {UNAVAILABLE, "DEADLINE_EXCEEDED"}, "plaintext call")
    for what, cfg in (("plaintext device", ClientConfig(t.address)),
                      ("device trusting another CA", ClientConfig(t.address, tls_ca=str(_other_ca(t))))):
        try:
            CloudClient(cfg).check_tls()
            code = "NOT_DETECTED"
        except TLSSetupError:
            code = "TLS_ERROR"                                # the device exits 2 naming it
        out.expect(code, {"TLS_ERROR"}, what)
    out.note = "plaintext client, wrong CA: refused, and the device says TLS"
    return out


def _other_ca(t: Target) -> Path:
    from tests.pki import ThrowawayPKI
    return ThrowawayPKI(t.log_path.parent, "other CA").ca_path


def flood(t: Target, reqs, oracle, small: bool) -> Outcome:
    out, n = Outcome(), 300 if small else 3000
    bad = pb.InferRequest(request_id="flood", model="fmnist-vgg", feature_map=pb.FeatureMap(bits=99))
    lines0, t0 = t.log_lines(), time.monotonic()
    with t.client(timeout_s=30) as c, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: _code(lambda: c.infer(bad)), range(n)))
    elapsed = time.monotonic() - t0
    for code in codes:
        out.expect(code, {INVALID, EXHAUSTED}, "bad request")
    time.sleep(0.5)
    lines = t.log_lines() - lines0
    bound = LOG_BURST + LOG_RATE_PER_S * (elapsed + 1) + 2
    if lines > bound:
        out.violations.append(f"{lines} log lines for {n} refusals in {elapsed:.1f} s (bound {bound:.0f})")
    out.note = f"{n} bad requests from 16 threads in {elapsed:.1f} s; {lines} log lines"
    return out


def silent_connections(t: Target, reqs, oracle, small: bool) -> Outcome:
    out, n = Outcome(), 50 if small else 200
    host, port = t.address.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(n)]
    h, infer = still_answering(t)
    out.expect(OK if h < 1 and infer < 1 else "slow", {OK}, f"{n} silent connections open")
    for s in socks:
        s.close()
    out.note = f"{n} TCP connections that never send a byte"
    return out


KILLED_CLIENT = """
import sys, time, grpc
from protos.coinfer.v1 import coinfer_pb2 as pb, coinfer_pb2_grpc as pb_grpc
address, ca, token, path = sys.argv[1:5]
req = pb.InferRequest.FromString(open(path, "rb").read())
ch = grpc.secure_channel(address, grpc.ssl_channel_credentials(open(ca, "rb").read()))
import queue; q = queue.Queue(); q.put(req)
answers = pb_grpc.CoInferStub(ch).InferStream(iter(q.get, None), metadata=(("authorization", "Bearer " + token),))
next(answers); print("answered", flush=True); time.sleep(600)
"""


def killed_clients(t: Target, reqs, oracle, small: bool) -> Outcome:
    out, n = Outcome(), 4 if small else 16
    path = t.log_path.parent / "frame.bin"
    path.write_bytes(next(r for r in reqs if r.WhichOneof("input") == "feature_map").SerializeToString())
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, t.address, str(t.ca), t.token, str(path)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        out.expect(OK if p.stdout.readline().startswith("answered") else "NO_ANSWER", {OK}, "stream before kill")
    open_during = _open_streams(t)
    for p in procs:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _open_streams(t) > 0:
        time.sleep(0.2)
    left = _open_streams(t)
    out.expect(OK if left == 0 else f"{left}_STREAMS_LEFT", {OK}, "streams reclaimed after SIGKILL")
    out.note = f"{n} clients SIGKILLed mid-stream; open streams {open_during:.0f} -> {left:.0f}"
    return out


def _open_streams(t: Target) -> float:
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{t.metrics_port}/metrics", timeout=10).read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "coinfer_open_streams")


def churn(t: Target, reqs, oracle, small: bool) -> Outcome:
    out = Outcome()
    for _ in range(50 if small else 300):
        with t.client(timeout_s=10) as c:
            out.expect(_code(lambda: c.probe(10, 10)), {OK}, "probe on a fresh connection")
    out.note = "connect, one call, close"
    return out


ATTACKS = [("fuzz: captured requests, every field mutated", fuzz), ("idle streams", idle_streams),
           ("devices streaming at once", streaming_devices), ("huge request ids", huge_ids),
           ("answer cache: known ids", cache_probe), ("huge scales / offsets", huge_side_data),
           ("zstd bombs", bombs), ("oversize messages", oversize), ("token: missing, wrong, doubled", auth),
           ("TLS mismatch", tls_mismatch), ("flood of bad requests", flood),
           ("silent TCP connections", silent_connections), ("clients killed mid-stream", killed_clients),
           ("connection churn", churn)]


def still_answering(t: Target) -> tuple[float, float]:
    """Seconds for a health check and a real Infer (inf when either fails)."""
    with t.client(timeout_s=5) as c:
        c.wait_ready(10)
        t0 = time.monotonic()
        try:
            ok = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
            h = time.monotonic() - t0 if ok else float("inf")
        except grpc.RpcError:
            h = float("inf")
        t0 = time.monotonic()
        try:
            c.infer(pb.InferRequest(request_id="", model="fmnist-vgg", image=pb.Image(
                channels=1, height=28, width=28, payload=zstandard.ZstdCompressor().compress(bytes(784)))))
            return h, time.monotonic() - t0
        except grpc.RpcError:
            return h, float("inf")


@dataclass
class Row:
    attack: str
    outcome: Outcome
    health_s: float
    infer_s: float
    rss_before: int
    rss_after: int


def run_matrix(small: bool = False, only: list[str] | None = None) -> tuple[list[Row], int, int]:
    """Every attack against one daemon; (rows, RSS after warm-up, RSS at the end)."""
    reqs = captured_requests()
    oracle = Oracle()
    with tempfile.TemporaryDirectory(prefix="coinfer-attack-") as d:
        t = Target(Path(d)).start()
        try:
            for _ in range(20):                                  # warm-up: every code path once
                still_answering(t)
            with t.client() as c:
                for r in reqs:
                    c.infer(r)
            rss0 = rss_bytes(t.proc.pid)
            rows = []
            for name, attack in ATTACKS:
                if only and not any(o in name for o in only):
                    continue
                before = rss_bytes(t.proc.pid)
                outcome = attack(t, reqs, oracle, small)
                time.sleep(0.5)
                h, i = still_answering(t)
                rows.append(Row(name, outcome, h, i, before, rss_bytes(t.proc.pid)))
            rss1 = rss_bytes(t.proc.pid)
        finally:
            code = t.stop()
            t._log.close()
        if code != 0:
            raise RuntimeError(f"the daemon exited {code} after the attacks")
    return rows, rss0, rss1


def table(rows: list[Row], rss0: int, rss1: int) -> list[str]:
    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    lines = ["| attack | calls | statuses | violations | still answering (health / Infer s) | RSS before (MiB) "
             "| RSS after (MiB) | growth |", "|---|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        st = ", ".join(f"{k} {v}" for k, v in sorted(r.outcome.statuses.items()))
        alive = "yes" if r.health_s < 1 and r.infer_s < 1 else "NO"
        lines.append(f"| {r.attack} ({r.outcome.note}) | {r.outcome.calls} | {st} | {len(r.outcome.violations)} | "
                     f"{alive} ({r.health_s:.3f} / {r.infer_s:.3f}) | {mib(r.rss_before)} | {mib(r.rss_after)} | "
                     f"{(r.rss_after - r.rss_before) / r.rss_before:+.1%} |")
    growth = (rss1 - rss0) / rss0
    bad = sum(len(r.outcome.violations) for r in rows)
    lines += ["", f"Server RSS after warm-up {mib(rss0)} MiB, after all attacks {mib(rss1)} MiB ({growth:+.1%}). "
              f"Targets: no OK to a bad request and no unhandled status ({'met' if not bad else f'NOT met: {bad}'}), "
              f"still answering after every attack ({'met' if all(r.health_s < 1 and r.infer_s < 1 for r in rows) else 'NOT met'}), "
              f"RSS growth under 10% ({'met' if growth < 0.10 else 'NOT met'})."]
    lines += [f"- {r.attack}: {v}" for r in rows for v in r.outcome.violations[:3]]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__)
    ap.add_argument("--small", action="store_true", help="fewer calls per attack (the test suite's size)")
    ap.add_argument("--only", action="append", help="attacks whose name contains this (repeatable)")
    args = ap.parse_args(argv)
    rows, rss0, rss1 = run_matrix(args.small, args.only)
    lines = header("Attack matrix: one cloud daemon (TLS + token) on loopback",
                   "python -m bench.attack" + (" --small" if args.small else ""))
    lines += ["Attacks run one after another against the same daemon (fmnist-vgg, default bounds: 8 workers, "
              "64 concurrent calls, 1024 streams). After each: a health check and a real Infer, each within 1 s. "
              "Violations: an OK answer to a request the engine refuses, a status the attack may not get, "
              "a wrong answer, more log lines than the rate limit allows.", ""]
    lines += table(rows, rss0, rss1)
    if not args.only:
        write("attack", lines)
    else:
        print("\n".join(lines))
    ok = all(not r.outcome.violations and r.health_s < 1 and r.infer_s < 1 for r in rows)
    return 0 if ok and (rss1 - rss0) / rss0 < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
