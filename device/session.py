"""A device session: frames in, answers out, with live planning and cloud fail-over.

Frames are processed one at a time, in order (`process`), or up to K in flight over one
stream (`submit`, device.pipeline); either way each frame is prepared with the scheme
planned when it starts, so the scheme changes only between frames, and none is dropped
or run twice. While the cloud is unreachable, frames run device-only
and a background prober watches for its return; then the planned scheme resumes.

The link is measured passively from frames while they flow, and actively (Probe) between
frames, on the frames' own thread, when no frame sampled the bandwidth for
`probe_interval_s` (device-only plans, small frames): a probe never queues behind an
upload, nor competes with a frame for a CPU-quota'd device (either inflated the base RTT
and then every sample), at the cost of delaying the next frame by the probe (~0.2-1 s,
0.9 s at 0.5 Mbps under a 0.1 quota): so probes are also kept to `probe_time_budget` of the
session's time, the wait after one being its duration / that budget.  A background thread
only watches for a cloud that went away to come back.

The first plan is made at start, once the link is measured: it pays the search's one-time
set-up (2 s of wall time under a 0.1 quota, fmnist-vgg), as the start-up profile pays the
network's.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from device.client import CloudClient
from device.live_planner import LivePlanner
from device.live_profile import LiveState
from device.pipeline import Pipeline
from device.runner import FALLBACK_CODES, DeviceRunner, FrameResult
from planner.scheme import DEVICE_ONLY, Scheme
from protos.coinfer.v1 import coinfer_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class SessionFrame:
    """A frame's result with what the session knew when it ran it."""

    result: FrameResult
    planned: str                    # the scheme the planner wanted for this frame
    bandwidth_mbps: float | None    # current uplink estimate
    rtt_s: float | None             # current base round-trip estimate
    replanned: bool = False         # a new plan was made before this frame

    def as_dict(self) -> dict:
        d = self.result.as_dict()
        d.update(planned=self.planned, bandwidth_mbps=self.bandwidth_mbps, link_rtt_s=self.rtt_s,
                 replanned=self.replanned)
        return d


@dataclass
class LiveSession:
    runner: DeviceRunner
    client: CloudClient
    state: LiveState
    planner: LivePlanner | None          # None: a fixed scheme
    fixed: Scheme | None = None
    probe_interval_s: float = 5.0        # probe when no frame sampled the bandwidth for this long
    probe_time_budget: float = 0.02      # ... and probes take at most this share of the time
    down_probe_interval_s: float = 1.0   # reachability probe while it is down
    cloud_up: bool = True
    _stop: threading.Event = field(default_factory=threading.Event)
    _prober: threading.Thread | None = None
    # the first frame after a scheme change pays one-off costs (the first call of its kind, the
    # CPU quota the previous scheme's frames used up): it does not sample the link
    _last_scheme: Scheme | None = None
    _switched: bool = False
    _cpu_frame_end: float | None = None    # process CPU seconds when the last frame ended
    _probe_wait_s: float = 0.0             # the latest probe's seconds / probe_time_budget
    _frames: int = 0                       # frames processed (the first pays one-off costs)

    def __post_init__(self) -> None:
        self.runner.on_answer = self._observe

    def _observe(self, req: pb.InferRequest, resp: pb.InferResponse, rtt_s: float, encode_s: float) -> None:
        self.state.bytes.observe(req, encode_s, resp.decode_s)
        if not self._switched:
            self.state.link.observe_inference(req.ByteSize(), rtt_s, resp.decode_s + resp.tail_s)

    # -- probing ------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._connect()
        except grpc.RpcError as e:
            log.warning("cloud unreachable at start (%s); running device-only until it answers", e.code().name)
            self.cloud_up = False
        self._prober = threading.Thread(target=self._reachability_loop, name="coinfer-prober", daemon=True)
        self._prober.start()
        if self.cloud_up and self.planner is not None:
            self._planned()

    def _connect(self) -> None:
        """Learn the cloud's model info if still unknown, then measure the link."""
        self._server_info()
        self.state.link.probe(self.client)

    def _server_info(self) -> None:
        if self.state.server is None:
            info = {m.name: m for m in self.client.server_info().models}
            if self.state.model_name not in info:
                raise RuntimeError(f"the cloud does not serve {self.state.model_name}")
            self.state.server = info[self.state.model_name]
            if self.planner is not None:
                self.planner.use_server_info(self.state.server)
                self.state.base_top1_error = self.planner.base_error

    def _reachability_loop(self) -> None:
        """While the cloud is down: ask it for its server info until it answers.  The link is
        measured again before the next frame, on the frames' thread."""
        while not self._stop.wait(self.down_probe_interval_s):
            if self.cloud_up:
                continue
            try:
                self._server_info()
                self.client.probe(1, 1)
            except grpc.RpcError:
                continue
            log.info("cloud is back; measuring the link, then resuming the planned scheme")
            self.state.link.last_sample_at = None      # stale: probe before the next frame
            self.cloud_up = True

    def _probe_if_stale(self) -> None:
        """Between frames, on the frames' thread: probe when no frame sampled the bandwidth for
        `probe_interval_s`.  A probe never shares the link, or the device's CPU, with a frame."""
        if not self.cloud_up or self.state.link.idle_for() < max(self.probe_interval_s, self._probe_wait_s):
            return
        t0 = time.monotonic()
        try:
            self.state.link.probe(self.client, target_s=0.1)
            self._probe_wait_s = (time.monotonic() - t0) / self.probe_time_budget
        except grpc.RpcError as e:
            if e.code() not in FALLBACK_CODES:
                raise
            log.warning("cloud probe failed (%s)", e.code().name)
            self.cloud_up = False

    def close(self) -> None:
        self._stop.set()
        if self._prober is not None:
            self._prober.join(timeout=10)

    # -- frames -------------------------------------------------------------------------------
    def _planned(self) -> tuple[Scheme | None, bool]:
        """(the scheme for the next frame, whether a new plan was made); None: no plan yet."""
        if self.planner is None:
            assert self.fixed is not None
            return self.fixed, False
        bw = self.state.link.bandwidth_mbps
        replanned = False
        if bw is not None and self.state.server is not None and self.planner.needs_plan(bw):
            before = self.planner.current.scheme if self.planner.current else None
            result = self.planner.plan(self.state.profile(), bw)
            replanned = True
            log.info("planned %s at %.3f Mbps, rtt %s (was %s): predicted %.4f s",
                     result.scheme or result.best_single_end, bw, self.state.link.rtt_s, before,
                     result.latency_s or float("nan"))
        if self.planner.current is None:      # the cloud has not answered yet
            return None, replanned
        return self.planner.scheme(), replanned

    def _next_scheme(self) -> tuple[Scheme | None, Scheme, bool, str | None]:
        """(planned, the scheme to run now, replanned, fallback note) for the next frame."""
        planned, replanned = self._planned()
        if (planned is None or planned.is_split or planned == Scheme.parse("cloud-only")) and \
                (planned is None or not self.cloud_up):
            return planned, DEVICE_ONLY, replanned, "cloud unreachable (probing)"
        return planned, planned, replanned, None

    # -- frames in flight (device.pipeline) ---------------------------------------------------
    def submit(self, pipe: Pipeline, image: np.ndarray, label: int | None = None) -> list[SessionFrame]:
        """Start one frame on `pipe` with the scheme planned now; the frames answered since, in
        order.  Re-planning happens here, between frames; a probe waits for the pipe to empty."""
        if pipe.on_answer is None:
            pipe.on_answer = self._observe_stream
        out = self._delivered(pipe.poll())
        if pipe.in_flight and self.cloud_up and self.state.link.idle_for() >= self.probe_interval_s:
            out += self._delivered(pipe.drain())      # a probe never shares the link with a frame
        self._probe_if_stale()
        if self.planner is not None:
            self.state.observe_image(image, self.runner.codec_cfg)
        planned, scheme, replanned, note = self._next_scheme()
        switched = planned != self._last_scheme
        self._last_scheme = planned
        tag = (planned, self.state.link.bandwidth_mbps, self.state.link.rtt_s, replanned, note, switched)
        return out + self._delivered(pipe.submit(scheme, image, label, tag))

    def drain(self, pipe: Pipeline) -> list[SessionFrame]:
        return self._delivered(pipe.drain())

    def _observe_stream(self, req: pb.InferRequest, resp: pb.InferResponse, rtt_s: float | None,
                        encode_s: float, tag) -> None:
        """Every answer feeds the codec tables; only a frame sent into an empty pipe, and not the
        first after a scheme change, samples the link (device.pipeline says why)."""
        self.state.bytes.observe(req, encode_s, resp.decode_s)
        if rtt_s is not None and not tag[5]:
            self.state.link.observe_inference(req.ByteSize(), rtt_s, resp.decode_s + resp.tail_s)

    def _delivered(self, done) -> list[SessionFrame]:
        out = []
        for r, (planned, bw, rtt, replanned, note, _) in done:
            if note is not None:
                r = dataclasses.replace(r, fallback=note)
            elif r.fallback:
                self.cloud_up = False
            out.append(SessionFrame(r, "none" if planned is None else str(planned), bw, rtt, replanned))
        return out

    def process(self, image: np.ndarray, label: int | None = None) -> SessionFrame:
        """One frame; the CPU this process spent since the previous frame ended (reading the next
        image, writing results, probing, planning) is what a CPU quota rations beside the frame."""
        now = time.process_time()
        if self._cpu_frame_end is not None:
            self.state.observe_loop_cpu(now - self._cpu_frame_end)
        try:
            return self._process(image, label)
        finally:
            self._cpu_frame_end = time.process_time()

    def _process(self, image: np.ndarray, label: int | None = None) -> SessionFrame:
        self._probe_if_stale()
        if self.planner is not None:
            self.state.observe_image(image, self.runner.codec_cfg)
        planned, replanned = self._planned()
        self._switched = planned != self._last_scheme
        self._last_scheme = planned
        cpu0 = time.process_time()
        observe = self.state.observe_frame_cpu if self._frames else (lambda *_: None)   # first: one-off costs
        self._frames += 1
        if planned is None or planned.is_split or planned == Scheme.parse("cloud-only"):
            if planned is None or not self.cloud_up:
                r = self.runner.run(DEVICE_ONLY, image, label)
                r = dataclasses.replace(r, fallback="cloud unreachable (probing)")
                observe(DEVICE_ONLY, time.process_time() - cpu0)
            else:
                r = self.runner.run(planned, image, label)
                if r.fallback:
                    self.cloud_up = False
                else:
                    observe(planned, time.process_time() - cpu0)
        else:
            r = self.runner.run(planned, image, label)
            observe(planned, time.process_time() - cpu0)
        return SessionFrame(r, "none" if planned is None else str(planned), self.state.link.bandwidth_mbps,
                            self.state.link.rtt_s, replanned)
