"""`coinfer-cloud serve --engine ray`: decode and tails in a Ray Serve deployment.

The grpcio server stays the front door (protocol, TLS, token, validation, cache, admission,
health, metrics, drain); only the compute step goes through a deployment handle to one of
N replicas. A replica builds the same models, bank and artifacts from the same ServerConfig,
batches the requests it holds (`@serve.batch`; equal model, artifact, partition and tail run
as one torch batch, decode stays per request) and says who answered and in what batch.
Serve runs without its HTTP and gRPC proxies: devices never see Ray.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass

import ray
import torch
from ray import serve
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import ReplicaUnavailableError

from cloud.engine import LocalTails, Prepared
from cloud.errors import TailsUnavailableError
from cloud.server import ServerConfig, load_served_model
from protos.coinfer.v1 import coinfer_pb2 as pb

log = logging.getLogger(__name__)

APP_NAME = "coinfer-tails"
# what a replica that died or went away mid-request raises at the handle: the request is sent again
REPLICA_GONE = (RayActorError, WorkerCrashedError, NodeDiedError, ReplicaUnavailableError)
REDISPATCH_PAUSE_S = 0.05        # before the next try, seconds (Serve's router drops a dead replica)


@dataclass(frozen=True)
class ReplicaStats:
    """What the front has seen of the replicas since start (copied, for /metrics)."""

    per_replica: dict[str, int]       # replica -> answers (failures included)
    per_batch: dict[int, int]         # batch size -> requests answered in one
    redispatched: int                 # requests sent again after their replica went away
    gave_up: int                      # requests answered UNAVAILABLE after every try failed


@serve.deployment
class TailReplica:
    """One replica: the served model's tails in this Ray worker."""

    def __init__(self, cfg: ServerConfig):
        torch.set_num_threads(cfg.torch_threads or 1)
        served = load_served_model(dataclasses.replace(cfg, profile_repeats=0))   # the front reports timings
        self.tails = LocalTails({served.name: served})
        ctx = serve.get_replica_context()
        rank = getattr(ctx, "rank", None)
        self.replica = str(rank.rank) if rank is not None else ctx.replica_id.unique_id
        self.infer_batch.set_max_batch_size(cfg.batch_max_size)
        self.infer_batch.set_batch_wait_timeout_s(cfg.batch_wait_s)

    async def __call__(self, request: bytes, received_bytes: int) -> tuple[bytes | Exception, str, int]:
        """(serialized InferResponse or the failure, replica, size of the batch it ran in)."""
        return await self.infer_batch((request, received_bytes))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def infer_batch(self, items: list[tuple[bytes, int]]) -> list[tuple[bytes | Exception, str, int]]:
        return await asyncio.to_thread(self._run, items)

    def _run(self, items: list[tuple[bytes, int]]) -> list[tuple[bytes | Exception, str, int]]:
        """Decode each request (a failure answers only its own), then run them batched."""
        out: list[tuple[bytes | Exception, str, int]] = [(b"", self.replica, 0)] * len(items)
        ready: list[tuple[int, Prepared]] = []
        for i, (data, received_bytes) in enumerate(items):
            try:
                ready.append((i, self.tails.prepare(pb.InferRequest.FromString(data), received_bytes)))
            except Exception as e:  # noqa: BLE001 - sent back to the front, which maps it to a status
                out[i] = (e, self.replica, 1)
        if ready:
            answers = self.tails.run_batch([p for _, p in ready])
            for (i, _), (response, batch) in zip(ready, answers):
                out[i] = (response.SerializeToString(), self.replica, batch)
            log.debug("replica %s: %d requests, batches %s", self.replica, len(ready), [b for _, b in answers])
        return out


class RayTails:
    """The TailRunner on Ray Serve: a local Ray instance (or `cfg.ray_address`'s cluster), Serve
    without proxies, `cfg.replicas` TailReplicas; counts answers per replica and batch size."""

    def __init__(self, cfg: ServerConfig):
        if cfg.replicas < 1:
            raise ValueError(f"--replicas: expected at least 1, got {cfg.replicas}")
        if not cfg.replica_timeout_s > 0:
            raise ValueError(f"--replica-timeout-s: expected a positive number of seconds, got {cfg.replica_timeout_s}")
        if cfg.batch_max_size < 1:
            raise ValueError(f"--batch-max-size: expected at least 1, got {cfg.batch_max_size}")
        self.local = cfg.ray_address is None
        if self.local:
            # the local instance's processes inherit this; no usage report from a daemon
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            # the local instance holds what every replica asks for (a cluster's nodes declare theirs)
            ray.init(num_cpus=cfg.replicas, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING,
                     resources={name: amount * cfg.replicas for name, amount in cfg.replica_resources})
        else:
            ray.init(address=cfg.ray_address, log_to_driver=False, logging_level=logging.WARNING)
        try:
            serve.start(proxy_location="Disabled")
            actor = {"num_cpus": 1, "resources": dict(cfg.replica_resources)}
            app = TailReplica.options(num_replicas=cfg.replicas, ray_actor_options=actor,
                                      max_ongoing_requests=max(16, 4 * cfg.batch_max_size)).bind(cfg)
            self.handle = serve.run(app, name=APP_NAME, route_prefix=None)
        except BaseException:
            self._shutdown()
            raise
        self.lock = threading.Lock()
        self.replica_requests: Counter[str] = Counter()   # replica -> answers (failures included)
        self.batched_requests: Counter[int] = Counter()   # batch size -> requests answered in one
        self.tries = cfg.redispatch_tries
        self.try_timeout_s = cfg.replica_timeout_s
        self.redispatched = 0
        self.gave_up = 0
        log.info("ray engine: %d replicas of %s on %s, batches up to %d", cfg.replicas, cfg.model,
                 "a local Ray instance" if self.local else cfg.ray_address, cfg.batch_max_size)

    def infer(self, req: pb.InferRequest, received_bytes: int) -> pb.InferResponse:
        answer, replica, batch = self._dispatch(req.SerializeToString(), received_bytes, req.request_id)
        with self.lock:
            self.replica_requests[replica] += 1
            self.batched_requests[batch] += 1
        if isinstance(answer, Exception):
            raise answer
        return pb.InferResponse.FromString(answer)

    def _dispatch(self, data: bytes, received_bytes: int, request_id: str) -> tuple[bytes | Exception, str, int]:
        """Send the request to a replica; when the replica dies or goes away before it answers
        (a node lost, a worker killed) or gives no answer within `try_timeout_s`, send it again,
        up to `self.tries` tries in all, then
        TailsUnavailableError (UNAVAILABLE: the device retries or falls back)."""
        for attempt in range(1, self.tries + 1):
            response = self.handle.remote(data, received_bytes)
            try:
                return response.result(timeout_s=self.try_timeout_s)
            except (*REPLICA_GONE, TimeoutError) as e:
                # a request held by a replica whose node vanished may never be failed by Ray (its
                # actor is not declared dead while the cluster waits for the node): a try times out
                if isinstance(e, TimeoutError):
                    response.cancel()
                with self.lock:
                    if attempt < self.tries:
                        self.redispatched += 1
                    else:
                        self.gave_up += 1
                log.warning("request %r: replica gone (%s), try %d of %d%s", request_id[:64], type(e).__name__,
                            attempt, self.tries, "; sending it again" if attempt < self.tries else "; giving up")
                if attempt < self.tries:
                    time.sleep(REDISPATCH_PAUSE_S * attempt)
        raise TailsUnavailableError(f"no replica answered after {self.tries} tries; retry later")

    def stats(self) -> ReplicaStats:
        with self.lock:
            return ReplicaStats(dict(self.replica_requests), dict(self.batched_requests), self.redispatched,
                                self.gave_up)

    def close(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        """Our application goes; a local Ray instance goes with it, a joined cluster stays."""
        if not ray.is_initialized():
            return
        try:
            if self.local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
