"""Prometheus metrics of the cloud daemon (`coinfer-cloud serve --metrics-port P`).

Counters and histograms are updated by the servicer as calls end; gauges (in-flight work,
open streams, cache, models) are read from the live objects at scrape time. Each server
has its own registry: nothing global changes at run time.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# seconds; from a cached answer (~0.1 ms) to a large model's whole network (~10 s)
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StateCollector(Collector):
    """Gauges read at scrape time from `engine`, the servicer's slots and the refusal trace."""

    def __init__(self, engine, streams: Callable[[], int], suppressed: Callable[[], int]):
        self.engine, self.streams, self.suppressed = engine, streams, suppressed

    def collect(self):
        e = self.engine
        yield GaugeMetricFamily("coinfer_inflight_requests", "Requests holding a memory reservation now",
                                value=e.budget.calls)
        yield GaugeMetricFamily("coinfer_inflight_bytes", "Bytes reserved by requests in progress",
                                value=e.budget.used_bytes)
        yield GaugeMetricFamily("coinfer_open_streams", "InferStream calls open now", value=self.streams())
        yield CounterMetricFamily("coinfer_cache_hits", "Requests answered from the answer cache",
                                  value=e.answers.hits)
        yield GaugeMetricFamily("coinfer_cache_entries", "Answers held by the answer cache", value=len(e.answers))
        yield GaugeMetricFamily("coinfer_cache_bytes", "Bytes held by the answer cache (counted in the memory bound)",
                                value=e.answers.nbytes)
        yield CounterMetricFamily("coinfer_log_suppressed", "Refusal log lines dropped by the rate limit",
                                  value=self.suppressed())
        loaded = GaugeMetricFamily("coinfer_model_loaded", "1 for each model this server runs", labels=["model"])
        tails = GaugeMetricFamily("coinfer_model_tails", "Fine-tuned tails (artifacts, bank schemes) loaded per model",
                                  labels=["model"])
        for name, served in e.models.items():
            loaded.add_metric([name], 1)
            tails.add_metric([name], len(served.artifacts) + (len(served.bank) if served.bank is not None else 0))
        yield loaded
        yield tails
        stats = getattr(e.runner, "stats", None)       # the Ray engine's replicas (cloud.ray_engine)
        if stats is not None:
            st = stats()
            replicas = CounterMetricFamily("coinfer_replica_requests", "Requests answered by each Ray Serve replica",
                                           labels=["replica"])
            for replica, n in sorted(st.per_replica.items()):
                replicas.add_metric([replica], n)
            batched = CounterMetricFamily("coinfer_replica_batched_requests", "Requests answered in a tail batch "
                                          "of each size (equal model, artifact, partition and tail)",
                                          labels=["batch_size"])
            for size, n in sorted(st.per_batch.items()):
                batched.add_metric([str(size)], n)
            yield replicas
            yield batched
            yield CounterMetricFamily("coinfer_replica_redispatched", "Requests sent to another try after their "
                                      "replica died or went away mid-request", value=st.redispatched)
            yield CounterMetricFamily("coinfer_replica_unavailable", "Requests answered UNAVAILABLE after every "
                                      "try found its replica gone", value=st.gave_up)


class CloudMetrics:
    def __init__(self, engine, streams: Callable[[], int] = lambda: 0, suppressed: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("coinfer_requests", "Calls (stream frames count one each) by method and status code",
                                ["method", "code"], registry=r)
        self.seconds = Histogram("coinfer_request_seconds", "Server time per call or stream frame, seconds",
                                 ["method"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.decode_seconds = Histogram("coinfer_decode_seconds", "Decompress and dequantize time per answered "
                                        "frame, seconds", buckets=LATENCY_BUCKETS_S, registry=r)
        self.tail_seconds = Histogram("coinfer_tail_seconds", "Tail (or whole network) time per answered frame, "
                                      "seconds", buckets=LATENCY_BUCKETS_S, registry=r)
        self.received = Counter("coinfer_received_bytes", "Serialized request bytes received, by method",
                                ["method"], registry=r)
        r.register(_StateCollector(engine, streams, suppressed))

    def observe(self, method: str, code: str, seconds: float, received_bytes: int = 0, answer=None) -> None:
        """One call or stream frame ended with `code` after `seconds`."""
        self.requests.labels(method, code).inc()
        self.seconds.labels(method).observe(seconds)
        if received_bytes:
            self.received.labels(method).inc(received_bytes)
        if answer is not None:
            self.decode_seconds.observe(answer.decode_s)
            self.tail_seconds.observe(answer.tail_s)

    def serve(self, host: str, port: int) -> tuple[object, int]:
        """Serve /metrics on host:port (0 picks a free port); (http server, bound port)."""
        httpd, _ = start_http_server(port, addr=host, registry=self.registry)
        return httpd, httpd.server_address[1]
