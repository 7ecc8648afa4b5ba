"""TLS, mutual TLS and the bearer token, against real daemons on loopback."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.server import ServerConfig, check_security
from device.client import ClientConfig, CloudClient
from protos.coinfer.v1 import coinfer_pb2 as pb
from tests.conftest import REPO, CloudProcess
from tests.pki import ThrowawayPKI

FAST = ("--model", "fmnist-vgg", "--profile-repeats", "0")


def device_infer(address: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device", "infer", "--cloud", address, "--scheme", "3:8:4",
                           "--dataset", "fashion-mnist", "--limit", "3", "--json", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def token_cloud(tmp_path_factory):
    d = tmp_path_factory.mktemp("token")
    (d / "token").write_text("s3cret-token\n")
    (d / "wrong").write_text("not-the-token\n")
    cloud = CloudProcess(*FAST, "--token-file", str(d / "token"))
    yield cloud, d
    assert cloud.stop() == 0


@pytest.mark.slow
def test_missing_token_is_unauthenticated_and_nonzero(token_cloud):
    cloud, _ = token_cloud
    out = device_infer(cloud.address)
    assert out.returncode != 0 and "UNAUTHENTICATED" in out.stderr, out.stderr


@pytest.mark.slow
def test_wrong_token_is_unauthenticated_and_nonzero(token_cloud):
    cloud, d = token_cloud
    out = device_infer(cloud.address, "--token-file", str(d / "wrong"))
    assert out.returncode != 0 and "UNAUTHENTICATED" in out.stderr, out.stderr


@pytest.mark.slow
def test_right_token_works(token_cloud):
    cloud, d = token_cloud
    out = device_infer(cloud.address, "--token-file", str(d / "token"))
    assert out.returncode == 0, out.stderr
    assert '"images": 3' in out.stdout.splitlines()[-1]


@pytest.mark.slow
def test_refused_call_does_no_work(token_cloud):
    """A garbage frame without the token is refused as UNAUTHENTICATED, not decoded (which
    would give INVALID_ARGUMENT); streaming calls are refused the same way."""
    cloud, _ = token_cloud
    garbage = pb.InferRequest(request_id="x", model="fmnist-vgg",
                              feature_map=pb.FeatureMap(partition=1, bits=4, payload=b"junk"))
    with CloudClient(ClientConfig(cloud.address, timeout_s=10)) as c:
        for call in (lambda: c.infer(garbage), lambda: list(c.infer_stream([garbage], timeout_s=10)),
                     lambda: c.probe(10, 10), c.server_info):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # health stays open for orchestrators
        reply = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ThrowawayPKI(tmp_path_factory.mktemp("pki"))


def refused_before_any_frame(out: subprocess.CompletedProcess, *words: str) -> None:
    """A TLS problem is an error at start-up, not an outage: non-zero, named, no frame run."""
    assert out.returncode != 0, out.stdout
    assert "TLS" in out.stderr and all(w in out.stderr for w in words), out.stderr
    assert out.stdout.strip() == "", out.stdout


@pytest.mark.slow
def test_tls_server_certificate(pki):
    cert, key = pki.issue("server", server=True)
    cloud = CloudProcess(*FAST, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        address = cloud.address.replace("127.0.0.1", "localhost")
        out = device_infer(address, "--tls-ca", str(pki.ca_path))
        assert out.returncode == 0, out.stderr
        plain = device_infer(address, "--timeout-s", "2")          # no TLS: cannot talk
        refused_before_any_frame(plain, "speaks TLS", "--tls-ca")
        other = ThrowawayPKI(pki.dir, "other CA")                       # a CA that did not sign it
        wrong = device_infer(address, "--tls-ca", str(other.ca_path), "--timeout-s", "2")
        refused_before_any_frame(wrong, "failed verification")
    finally:
        assert cloud.stop() == 0


@pytest.mark.slow
def test_mutual_tls_requires_a_client_certificate(pki):
    cert, key = pki.issue("mserver", server=True)
    ccert, ckey = pki.issue("device-1", server=False)
    cloud = CloudProcess(*FAST, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca_path))
    try:
        address = cloud.address.replace("127.0.0.1", "localhost")
        ok = device_infer(address, "--tls-ca", str(pki.ca_path), "--tls-cert", str(ccert), "--tls-key", str(ckey))
        assert ok.returncode == 0 and '"fallbacks": 0' in ok.stdout, ok.stderr
        anonymous = device_infer(address, "--tls-ca", str(pki.ca_path), "--timeout-s", "2")
        refused_before_any_frame(anonymous, "client certificate")
        stranger = ThrowawayPKI(pki.dir, "stranger CA")           # a client cert the cloud does not trust
        scert, skey = stranger.issue("device-x", server=False)
        untrusted = device_infer(address, "--tls-ca", str(pki.ca_path), "--tls-cert", str(scert),
                                 "--tls-key", str(skey), "--timeout-s", "2")
        refused_before_any_frame(untrusted, "client certificate")
    finally:
        assert cloud.stop() == 0


def test_tls_device_against_a_plaintext_cloud_is_refused(fmnist_cloud, pki):
    out = device_infer(fmnist_cloud.address.replace("127.0.0.1", "localhost"), "--tls-ca", str(pki.ca_path),
                       "--timeout-s", "2")
    refused_before_any_frame(out, "does not speak TLS")


def test_tls_device_with_the_cloud_down_still_fails_over(pki):
    with socket.socket() as s:                        # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = device_infer(f"localhost:{port}", "--tls-ca", str(pki.ca_path), "--timeout-s", "2")
    assert out.returncode == 0 and '"fallbacks": 3' in out.stdout, out.stderr


def test_serving_beyond_loopback_without_tls_warns(caplog):
    with caplog.at_level(logging.WARNING):
        check_security(ServerConfig(host="0.0.0.0"))
    assert "without TLS" in caplog.text and "in the clear" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_security(ServerConfig(host="127.0.0.1"))
    assert caplog.text == ""


@pytest.mark.parametrize("kw,message", [
    (dict(tls_cert="a.crt"), "--tls-cert and --tls-key must be given together"),
    (dict(tls_client_ca="ca.crt"), "--tls-client-ca needs --tls-cert"),
])
def test_half_configured_tls_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        check_security(ServerConfig(**kw))


@pytest.mark.slow
def test_cloud_cli_rejects_a_bad_token_file(tmp_path):
    (tmp_path / "empty").write_text("\n")
    out = subprocess.run([sys.executable, "-m", "cloud", "serve", "--port", "0", *FAST,
                          "--token-file", str(tmp_path / "empty")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "expected one token" in out.stderr
