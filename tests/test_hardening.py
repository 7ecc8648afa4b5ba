"""Issue 11: the defects an attack run found, each with a test that fails on the code before
its fix. Real daemons on loopback; plain units where the defect is in plain code."""
from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device.client import ClientConfig, CloudClient
from device.runner import DeviceRunner
from device.torch_heads import TorchHeads
from planner.data import load_fashion_mnist
from planner.models import build_model
from planner.scheme import Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb
from protos.coinfer.v1 import coinfer_pb2_grpc as pb_grpc
from tests.conftest import REPO, CloudProcess

FAST = ("--model", "fmnist-vgg", "--profile-repeats", "0")


@pytest.fixture(scope="module")
def images():
    return load_fashion_mnist("test")[0][:64].numpy()


@pytest.fixture(scope="module")
def runner():
    return DeviceRunner(TorchHeads(build_model("fmnist-vgg")), "fmnist-vgg", None)


@pytest.fixture(scope="module")
def cloud():
    c = CloudProcess(*FAST)
    yield c
    assert c.stop() == 0


def frame(runner, image, scheme="3:16:4", request_id=None) -> pb.InferRequest:
    req = runner.prepare(Scheme.parse(scheme), image)[0]
    if request_id is not None:
        req.request_id = request_id
    return req


def health_check(channel, timeout_s: float) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s).status


# --- 1. idle streams must not stop the server ------------------------------------------------

def test_64_idle_streams_leave_health_and_infer_answering_within_1s(cloud, runner, images):
    feeds, channels, calls = [], [], []
    try:
        for i in range(64):                       # 8 connections x 8 streams, none sends a frame
            if i % 8 == 0:
                channels.append(grpc.insecure_channel(cloud.address))
            q: queue.Queue = queue.Queue()
            feeds.append(q)
            calls.append(pb_grpc.CoInferStub(channels[-1]).InferStream(iter(q.get, None), timeout=120))
        time.sleep(2.0)                           # the streams are open on the server
        with CloudClient(ClientConfig(cloud.address, timeout_s=1.0)) as c:
            c.wait_ready(10)
            t0 = time.monotonic()
            assert health_check(c.channel, 1.0) == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - t0 < 1.0
            t0 = time.monotonic()
            answer, _ = c.infer(frame(runner, images[0]))
            assert len(answer.logits) == 10 and time.monotonic() - t0 < 1.0
        feeds[0].put(frame(runner, images[1], request_id="late-0"))   # an idle stream still works
        assert next(calls[0]).request_id == "late-0"
    finally:
        for q in feeds:
            q.put(None)
        for ch in channels:
            ch.close()


def test_64_devices_streaming_at_once_all_get_answers(cloud, runner, images):
    """Every device holds its stream open until all 64 have an answer: with a thread per stream
    and 8 threads, 56 would wait forever."""
    n = 64
    reqs = [frame(runner, images[i], request_id=f"dev-{i}") for i in range(n)]
    first_answers = threading.Barrier(n + 1, timeout=90)
    got: dict[int, list[str]] = {}

    def device(i: int) -> None:
        q: queue.Queue = queue.Queue()
        with grpc.insecure_channel(cloud.address) as ch:
            answers = pb_grpc.CoInferStub(ch).InferStream(iter(q.get, None), timeout=120)
            q.put(reqs[i])
            got[i] = [next(answers).request_id]
            first_answers.wait()
            second = pb.InferRequest()
            second.CopyFrom(reqs[i])
            second.request_id += "-b"
            q.put(second)
            got[i].append(next(answers).request_id)
            q.put(None)

    threads = [threading.Thread(target=device, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    first_answers.wait()                          # BrokenBarrierError when some never answered
    for t in threads:
        t.join(60)
    assert got == {i: [f"dev-{i}", f"dev-{i}-b"] for i in range(n)}


@pytest.fixture(scope="module")
def bounded_cloud():
    c = CloudProcess(*FAST, "--max-streams", "4", "--stream-idle-s", "1")
    yield c
    assert c.stop() == 0


def test_idle_streams_are_reclaimed_and_bounded(bounded_cloud, runner, images):
    with grpc.insecure_channel(bounded_cloud.address) as ch:
        stub = pb_grpc.CoInferStub(ch)
        feeds = [queue.Queue() for _ in range(5)]
        calls = [stub.InferStream(iter(q.get, None), timeout=30) for q in feeds[:4]]
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as err:      # the fifth is over --max-streams
            next(stub.InferStream(iter(feeds[4].get, None), timeout=30))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "open streams" in err.value.details()
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:      # idle beyond --stream-idle-s: ended
            next(calls[0])
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 5
        for q in feeds:
            q.put(None)
        time.sleep(1.5)                                # all four reclaimed: a new stream works
        q = queue.Queue()
        q.put(frame(runner, images[0], request_id="after"))
        q.put(None)
        assert [r.request_id for r in stub.InferStream(iter(q.get, None), timeout=30)] == ["after"]


def test_keepalive_is_set_on_server_and_channel():
    from cloud.server import ServerConfig, server_options
    from device.client import KEEPALIVE_OPTIONS
    server = dict(server_options(ServerConfig()))
    client = dict(KEEPALIVE_OPTIONS)
    for key in ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.max_connection_idle_ms",
                "grpc.max_connection_age_ms", "grpc.http2.min_ping_interval_without_data_ms"):
        assert server.get(key, 0) > 0, key
    assert server["grpc.keepalive_permit_without_calls"] == 1 and client["grpc.keepalive_permit_without_calls"] == 1
    # a client pinging more often than the server accepts gets GOAWAY too_many_pings
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]


# --- 2. the answer cache trusts nothing but the same request from the same caller ------------

def test_known_id_with_another_request_gets_no_cached_answer(cloud, runner, images):
    with CloudClient(ClientConfig(cloud.address, timeout_s=30)) as c:
        a = frame(runner, images[0], request_id="shared-id")
        first, _ = c.infer(a)
        assert c.infer(a)[0] == first                              # a retry: the same answer
        for bad in (pb.InferRequest(request_id="shared-id"),
                    pb.InferRequest(request_id="shared-id", model="fmnist-vgg")):
            with pytest.raises(grpc.RpcError) as err:
                c.infer(bad)
            assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        invalid = pb.InferRequest()
        invalid.CopyFrom(a)
        invalid.feature_map.bits = 9
        with pytest.raises(grpc.RpcError) as err:
            c.infer(invalid)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        b = frame(runner, images[1], request_id="shared-id")
        other, _ = c.infer(b)
        fresh, _ = c.infer(frame(runner, images[1], request_id="fresh-id"))
        assert list(other.logits) == list(fresh.logits) != list(first.logits)


def test_request_id_length_is_bounded(cloud, runner, images):
    with CloudClient(ClientConfig(cloud.address, timeout_s=30)) as c:
        assert c.infer(frame(runner, images[0], request_id="i" * 128))[0].request_id == "i" * 128
        with pytest.raises(grpc.RpcError) as err:
            c.infer(frame(runner, images[0], request_id="i" * 129))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in err.value.details()


def test_cache_hits_only_for_the_same_caller_and_counts_in_the_memory_bound(runner, images):
    from cloud.engine import Engine, ServedModel
    from cloud.limits import AnswerCache, InflightBudget
    model = build_model("fmnist-vgg")
    engine = Engine([ServedModel("fmnist-vgg", model, input_hw=model.spec.input_hw)], 1 << 20)
    req = frame(runner, images[0], request_id="r1")
    first = engine.handle(req, req.ByteSize(), caller="10.0.0.1")
    assert engine.handle(req, req.ByteSize(), caller="10.0.0.1") is first
    assert engine.handle(req, req.ByteSize(), caller="10.0.0.2") is not first
    assert engine.answers.hits == 1 and engine.answers.nbytes > 0

    cache = AnswerCache(capacity=1000, max_bytes=10_000)
    for i in range(100):
        cache.put((b"c", f"id-{i}".encode(), b"d" * 16), object(), 1000)
    assert cache.nbytes <= 10_000 and len(cache) < 100
    budget = InflightBudget(20_000, held=lambda: cache.nbytes)
    with pytest.raises(Exception, match="answer cache"):
        with budget.reserve(20_000 - cache.nbytes + 1):
            pass
    with budget.reserve(20_000 - cache.nbytes):
        pass


# --- 3. a TLS failure is not an outage: tested in tests/test_security.py -----------------------

# --- 4. finite but huge side data -------------------------------------------------------------

@pytest.mark.parametrize("field,value,expect", [
    ("scales", 3e38, "feature_map.scales"),          # offset + 15 * 3e38 overflows float32
    ("offsets", 3e38, "feature_map"),                # finite map, but the tail overflows
])
def test_huge_side_data_is_refused_never_answered_nan(cloud, runner, images, field, value, expect):
    req = frame(runner, images[0], request_id=None)
    side = getattr(req.feature_map, field)
    for i in range(len(side)):
        side[i] = value
    with CloudClient(ClientConfig(cloud.address, timeout_s=30)) as c:
        with pytest.raises(grpc.RpcError) as err:
            resp, _ = c.infer(req)
            pytest.fail(f"answered OK with logits {list(resp.logits)[:3]}...")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and expect in err.value.details()


# --- 5. the smaller ones ------------------------------------------------------------------------

def test_no_tls_warning_is_given_once():
    """The daemon on a host taken for non-loopback (monkeypatched; traffic stays on loopback)."""
    code = ("import sys, cloud.server as s; s.is_loopback = lambda host: False; "
            "from cloud.__main__ import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--port", "0", *FAST], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening on ")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert err.count("without TLS") == 1, err


def test_group_readable_token_file_warns(tmp_path, caplog):
    from common.credentials import read_token
    path = tmp_path / "token"
    path.write_text("t0ken\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_token(path) == "t0ken"
    assert "chmod 600" in caplog.text
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        read_token(path)
    assert caplog.text == ""


def test_device_warns_before_sending_a_token_in_the_clear(tmp_path, caplog):
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "token").chmod(0o600)
    with caplog.at_level(logging.WARNING):
        CloudClient(ClientConfig("192.0.2.1:50051", token_file=str(tmp_path / "token"))).close()  # never dialled
    assert "without TLS" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        CloudClient(ClientConfig("127.0.0.1:50051", token_file=str(tmp_path / "token"))).close()
    assert caplog.text == ""


@pytest.fixture(scope="module")
def token_cloud(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    (d / "token").write_text("s3cret-token\n")
    (d / "token").chmod(0o600)
    c = CloudProcess(*FAST, "--token-file", str(d / "token"))
    yield c
    assert c.stop() == 0


@pytest.mark.parametrize("headers,ok", [
    ([("authorization", "bearer s3cret-token")], True),          # the scheme is case-insensitive
    ([("authorization", "BEARER s3cret-token")], True),
    ([("authorization", "Bearer wrong"), ("authorization", "Bearer s3cret-token")], False),
    ([("authorization", "Bearer s3cret-token"), ("authorization", "Bearer wrong")], False),
    ([("authorization", "Basic s3cret-token")], False),
])
def test_bearer_scheme_and_a_single_header(token_cloud, headers, ok):
    with grpc.insecure_channel(token_cloud.address) as ch:
        call = lambda: pb_grpc.CoInferStub(ch).Probe(pb.ProbeRequest(response_bytes=1), timeout=10,  # noqa: E731
                                                     metadata=headers)
        if ok:
            assert len(call().payload) == 1
        else:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("field", ["model", "artifact_sha256"])
def test_client_strings_are_not_echoed_unbounded(cloud, runner, images, field):
    req = frame(runner, images[0])
    setattr(req, field, "A" * 100_000)
    with CloudClient(ClientConfig(cloud.address, timeout_s=30)) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.infer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.value.details()) < 1000


def test_oversize_frame_of_unknown_size_is_too_large_not_corrupt():
    from common.codec import CodecError, bounded_decompress
    cobj = zstandard.ZstdCompressor(level=19, write_content_size=False).compressobj()
    frame_ = cobj.compress(bytes(10_000_000)) + cobj.flush()       # no content size, 8 MiB window
    with pytest.raises(CodecError) as err:
        bounded_decompress(frame_, 1000, "feature_map.payload")
    assert "too large" in str(err.value) and "corrupt" not in str(err.value)


def test_proto_says_stream_answers_come_in_frame_order():
    text = (REPO / "protos/coinfer/v1/coinfer.proto").read_text()
    assert "arrive in frame order" in text and "any order" not in text


# --- the refusal trace ------------------------------------------------------------------------

def test_each_refusal_is_one_json_line_without_token_or_payload(tmp_path, runner, images):
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "token").chmod(0o600)
    c = CloudProcess(*FAST, "--log-format", "json", "--token-file", str(tmp_path / "token"))
    good = (("authorization", "Bearer s3cret-token"),)
    bad = frame(runner, images[0], request_id="trace-me")
    bad.feature_map.bits = 9
    try:
        with grpc.insecure_channel(c.address) as ch:
            stub = pb_grpc.CoInferStub(ch)
            with pytest.raises(grpc.RpcError):
                stub.Infer(bad, timeout=10, metadata=good)
            with pytest.raises(grpc.RpcError):
                stub.Infer(bad, timeout=10, metadata=(("authorization", "Bearer NOT-THE-TOKEN-42"),))
    finally:
        assert c.stop() == 0
    err = c.proc.stderr.read()
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    refused = [e for e in events if e.get("message") == "refused"]
    assert len(refused) == 2, err
    first, second = refused
    assert first["request_id"] == "trace-me" and first["code"] == "INVALID_ARGUMENT"
    assert first["method"] == "Infer" and "feature_map.bits" in first["reason"]
    assert first["peer"].startswith("ipv4:127.0.0.1:") and first["time"].endswith("Z")
    assert second["code"] == "UNAUTHENTICATED" and second["method"].endswith("/Infer")
    assert "NOT-THE-TOKEN-42" not in err and "s3cret-token" not in err
    assert bad.feature_map.payload.hex()[:32] not in err


def test_refusal_trace_is_rate_limited(caplog):
    from cloud.trace import RefusalTrace
    now = [0.0]
    trace = RefusalTrace(rate_per_s=10, burst=20, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="cloud.trace"):
        for _ in range(10_000):                      # a flood within one instant
            trace.record(grpc.StatusCode.INVALID_ARGUMENT, "ipv4:127.0.0.1:1", "Infer", "id", "bad")
        assert len(caplog.records) == 20
        now[0] = 1.0                                 # one second later: ten more lines
        for _ in range(100):
            trace.record(grpc.StatusCode.INVALID_ARGUMENT, "ipv4:127.0.0.1:1", "Infer", "id", "bad")
    assert len(caplog.records) == 30
    assert caplog.records[20].fields["suppressed"] == 10_000 - 20
    assert trace.suppressed_total == 10_100 - 30
