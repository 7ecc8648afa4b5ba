"""`coinfer-cloud serve --engine ray`: decode and tails in a Ray Serve deployment.

The grpcio server stays the front door (protocol, TLS, token, validation, cache, admission,
health, metrics, drain); only the compute step goes through a deployment handle to one of
N replicas. Batching happens on both sides of the handle: the front keeps a few calls in
flight (CALLS_PER_REPLICA per replica) and puts the requests that arrive meanwhile into the
next call together, since a handle call costs milliseconds whatever it carries; a replica
builds the same models, bank and artifacts from the same ServerConfig, gathers the calls that
arrive within --batch-wait-s (`@serve.batch`), runs equal model, artifact, partition and tail
as one torch batch of at most --batch-max-size (decode stays per request) and says who
answered and in what batch.
Serve runs without its HTTP and gRPC proxies: devices never see Ray.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections import Counter, deque
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
# handle calls the front keeps in flight per replica when batching: requests that arrive while
# they are all out wait in the front and go together in the next call (each call costs ~3 ms of
# Ray's own on this machine, whatever it carries: docs/benchmarks-notes.md#load)
CALLS_PER_REPLICA = 2


@dataclass
class _Waiting:
    """A request the front holds until a dispatcher sends it (its answer or failure comes back here)."""

    data: bytes
    received_bytes: int
    request_id: str
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    answer: tuple[bytes | Exception, str, int] | None = None
    error: BaseException | None = None


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
        self.batch_max_size = cfg.batch_max_size
        self.infer_batch.set_max_batch_size(cfg.batch_max_size)
        self.infer_batch.set_batch_wait_timeout_s(cfg.batch_wait_s)

    async def __call__(self, requests: list[tuple[bytes, int]]) -> list[tuple[bytes | Exception, str, int]]:
        """For each (serialized InferRequest, received bytes) the front sent in this call, in order:
        (serialized InferResponse or the failure, replica, size of the batch it ran in)."""
        return await self.infer_batch(requests)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def infer_batch(self, calls: list[list[tuple[bytes, int]]]) -> list[list[tuple[bytes | Exception, str, int]]]:
        """Calls that arrive together run together (`@serve.batch` counts calls; the front
        already put the requests it held at once into one call)."""
        flat = [item for call in calls for item in call]
        answers = await asyncio.to_thread(self._run, flat)
        out, start = [], 0
        for call in calls:
            out.append(answers[start:start + len(call)])
            start += len(call)
        return out

    def _run(self, items: list[tuple[bytes, int]]) -> list[tuple[bytes | Exception, str, int]]:
        """Decode each request (a failure answers only its own), then run them batched."""
        out: list[tuple[bytes | Exception, str, int]] = [(b"", self.replica, 0)] * len(items)
        ready: list[tuple[int, Prepared]] = []
        for i, (data, received_bytes) in enumerate(items):
            try:
                ready.append((i, self.tails.prepare(pb.InferRequest.FromString(data), received_bytes)))
            except Exception as e:  # noqa: BLE001 - sent back to the front, which maps it to a status
                out[i] = (e, self.replica, 1)
        for start in range(0, len(ready), self.batch_max_size):     # at most --batch-max-size in one batch
            chunk = ready[start:start + self.batch_max_size]
            answers = self.tails.run_batch([p for _, p in chunk])
            for (i, _), (response, batch) in zip(chunk, answers):
                out[i] = (response.SerializeToString(), self.replica, batch)
            log.debug("replica %s: %d requests, batches %s", self.replica, len(chunk), [b for _, b in answers])
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
        # batching: the front puts every request it holds at once into one handle call, with at
        # most `calls` calls in flight; without batching each request is its own call, at once
        self.call_max = cfg.batch_max_size
        self.waiting: deque[_Waiting] = deque()
        self.ready = threading.Condition(threading.Lock())
        self.closing = False
        self.dispatchers = [threading.Thread(target=self._dispatch_loop, name=f"ray-dispatch-{i}", daemon=True)
                            for i in range(CALLS_PER_REPLICA * cfg.replicas if cfg.batch_max_size > 1 else 0)]
        for t in self.dispatchers:
            t.start()
        log.info("ray engine: %d replicas of %s on %s, batches up to %d", cfg.replicas, cfg.model,
                 "a local Ray instance" if self.local else cfg.ray_address, cfg.batch_max_size)

    def infer(self, req: pb.InferRequest, received_bytes: int) -> pb.InferResponse:
        data = req.SerializeToString()
        if not self.dispatchers:
            answer, replica, batch = self._dispatch([(data, received_bytes)], req.request_id)[0]
        else:
            w = _Waiting(data, received_bytes, req.request_id)
            with self.ready:
                if self.closing:
                    raise TailsUnavailableError("the server is shutting down; retry later")
                self.waiting.append(w)
                self.ready.notify()
            w.done.wait()
            if w.error is not None:
                raise w.error
            answer, replica, batch = w.answer
        with self.lock:
            self.replica_requests[replica] += 1
            self.batched_requests[batch] += 1
        if isinstance(answer, Exception):
            raise answer
        return pb.InferResponse.FromString(answer)

    def _dispatch_loop(self) -> None:
        """One call in flight at a time: take every waiting request (up to --batch-max-size), send
        them in one handle call, hand each its answer."""
        while True:
            with self.ready:
                while not self.waiting and not self.closing:
                    self.ready.wait()
                if not self.waiting:
                    return
                batch = [self.waiting.popleft() for _ in range(min(len(self.waiting), self.call_max))]
            try:
                answers = self._dispatch([(w.data, w.received_bytes) for w in batch], batch[0].request_id)
                for w, a in zip(batch, answers):
                    w.answer = a
            except BaseException as e:  # noqa: BLE001 - each request's caller raises it
                for w in batch:
                    w.error = e
            for w in batch:
                w.done.set()

    def _dispatch(self, requests: list[tuple[bytes, int]], request_id: str) -> list[tuple[bytes | Exception, str, int]]:
        """Send the requests to a replica in one call; when the replica dies or goes away before
        it answers (a node lost, a worker killed) or gives no answer within `try_timeout_s`, send
        them again, up to `self.tries` tries in all, then TailsUnavailableError (UNAVAILABLE: the
        device retries or falls back).  `request_id`: the first request's, for the log."""
        for attempt in range(1, self.tries + 1):
            response = self.handle.remote(requests)
            try:
                return response.result(timeout_s=self.try_timeout_s)
            except (*REPLICA_GONE, TimeoutError) as e:
                # a request held by a replica whose node vanished may never be failed by Ray (its
                # actor is not declared dead while the cluster waits for the node): a try times out
                if isinstance(e, TimeoutError):
                    response.cancel()
                with self.lock:
                    if attempt < self.tries:
                        self.redispatched += len(requests)
                    else:
                        self.gave_up += len(requests)
                log.warning("request %r%s: replica gone (%s), try %d of %d%s", request_id[:64],
                            f" and {len(requests) - 1} more" if len(requests) > 1 else "", type(e).__name__,
                            attempt, self.tries, "; sending again" if attempt < self.tries else "; giving up")
                if attempt < self.tries:
                    time.sleep(REDISPATCH_PAUSE_S * attempt)
        raise TailsUnavailableError(f"no replica answered after {self.tries} tries; retry later")

    def stats(self) -> ReplicaStats:
        with self.lock:
            return ReplicaStats(dict(self.replica_requests), dict(self.batched_requests), self.redispatched,
                                self.gave_up)

    def close(self) -> None:
        with self.ready:
            self.closing = True
            self.ready.notify_all()
        for t in self.dispatchers:        # they send what still waits, then stop
            t.join(timeout=self.tries * self.try_timeout_s)
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
