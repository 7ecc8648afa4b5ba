"""Prometheus metrics of the device daemon (`coinfer-device run --metrics-port [HOST:]P`).

Fed from each frame's result as the daemon produces it: frames by scheme and outcome,
end-to-end latency, bytes sent, fallbacks by cause, plan changes, and the live link
estimates. Its own registry, served on HOST (default 127.0.0.1) port P.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# seconds; a device-only frame of a small model (~1 ms) to a slow link (~30 s)
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def parse_listen(text: str) -> tuple[str, int]:
    """`P` or `HOST:P` -> (host, port); the host defaults to loopback."""
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--metrics-port: expected P or HOST:P, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class DeviceMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.frames = Counter("coinfer_device_frames", "Frames by scheme run and outcome (cloud: answered by "
                              "the cloud; device: planned on the device; fallback: the cloud failed)",
                              ["scheme", "outcome"], registry=r)
        self.seconds = Histogram("coinfer_device_frame_seconds", "End-to-end time per frame, seconds",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.wire_bytes = Counter("coinfer_device_sent_bytes", "Application bytes sent to the cloud", registry=r)
        self.fallbacks = Counter("coinfer_device_fallbacks", "Frames run on the device because the cloud "
                                 "failed, by cause", ["cause"], registry=r)
        self.replans = Counter("coinfer_device_replans", "New plans made (auto)", registry=r)
        self.switches = Counter("coinfer_device_plan_switches", "Frames whose planned scheme differs from "
                                "the previous frame's", registry=r)
        self.bandwidth = Gauge("coinfer_device_bandwidth_mbps", "Current uplink estimate, Mbps", registry=r)
        self.rtt = Gauge("coinfer_device_rtt_seconds", "Current base round-trip estimate, seconds", registry=r)
        self._planned: str | None = None

    def observe(self, result, extra: dict) -> None:
        """One frame's FrameResult and the session's extra fields (planned, bandwidth...)."""
        if result.fallback:
            outcome = "fallback"
            self.fallbacks.labels(result.fallback.split(":", 1)[0].split(" (", 1)[0]).inc()
        else:
            outcome = "cloud" if result.wire_bytes else "device"
        self.frames.labels(result.scheme, outcome).inc()
        self.seconds.observe(result.total_s)
        self.wire_bytes.inc(result.wire_bytes)
        planned = extra.get("planned")
        if extra.get("replanned"):
            self.replans.inc()
        if planned is not None:
            if self._planned is not None and planned != self._planned:
                self.switches.inc()
            self._planned = planned
        if extra.get("bandwidth_mbps") is not None:
            self.bandwidth.set(extra["bandwidth_mbps"])
        if extra.get("link_rtt_s") is not None:
            self.rtt.set(extra["link_rtt_s"])

    def wrap(self, frame: Callable) -> Callable:
        """`frame(image, label) -> (result, extra)`, observed."""
        def observed(image, label):
            result, extra = frame(image, label)
            self.observe(result, extra)
            return result, extra
        return observed

    def serve(self, host: str, port: int) -> int:
        httpd, _ = start_http_server(port, addr=host, registry=self.registry)
        return httpd.server_address[1]


def serve_device_metrics(device, listen: str) -> DeviceMetrics:
    """Observe every frame of `device` (device.__main__.Device) and serve /metrics on `listen`."""
    metrics = DeviceMetrics()
    host, port = parse_listen(listen)
    bound = metrics.serve(host, port)
    import logging
    logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", host, bound)
    device.frame = metrics.wrap(device.frame)
    return metrics
