"""A tc rate change during a live `--scheme auto` run: how long until the plan follows.

`coinfer-device run --scheme auto` streams at rate A; after FOLLOW_WARMUP_FRAMES frames the
tbf rate becomes B (`ShapedLink.set_rate`); the result says after how many frames and
seconds the planned scheme changed and the bandwidth estimate came within 25% of B's goodput,
and whether every frame arrived once and in order (`check_frames`).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from bench.linkbench.config import (AUTO, DEVICE_START_S, FOLLOW_AFTER_FRAMES, FOLLOW_TIMEOUT_S,
                                    FOLLOW_WARMUP_FRAMES, BenchError, LinkBenchConfig, cloud_args,
                                    device_common)
from bench.linkbench.processes import Children
from testbed import ShapedLink, TbfShape, netns_exec_prefix


def _frame_index(request_id: str) -> tuple[str, int]:
    prefix, _, n = request_id.rpartition("-")
    return prefix, int(n)


def check_frames(frames: list[dict]) -> dict:
    """No frame lost or duplicated: request ids unique, one id prefix, numbers consecutive."""
    ids = [f["request_id"] for f in frames]
    parsed = [_frame_index(i) for i in ids]
    nums = [n for _, n in parsed]
    steps = [b - a for a, b in zip(nums, nums[1:])]
    return {"frames": len(frames), "unique_ids": len(set(ids)) == len(ids),
            "one_session": len({p for p, _ in parsed}) <= 1,
            "consecutive": all(s == 1 for s in steps), "id_steps": sorted(set(steps))}


def follow_rate_change(cfg: LinkBenchConfig, rate_a: float, rate_b: float, progress=print,
                       timeout_s: float = FOLLOW_TIMEOUT_S, extra_device_args: tuple[str, ...] = ()) -> dict:
    """`coinfer-device run --scheme auto` at rate A; switch to B with tc; how long until the
    planned scheme changes (and until the bandwidth estimate is within 25% of B's goodput)."""
    from cloud.daemon import CloudDaemon
    children = Children()
    frames: list[dict] = []
    summary: dict | None = None
    switch_at: tuple[int, float] | None = None
    changed_at = estimate_at = None
    stderr_tail: list[str] = []
    with ShapedLink(rate_a) as link:
        cloud = CloudDaemon(cloud_args(cfg), host=link.cloud_addr, prefix=link.exec_prefix(link.cloud_ns))
        try:
            cloud.start()
            argv = [sys.executable, "-m", "device", "run", *device_common(cfg, cloud.address, AUTO),
                    *extra_device_args]
            feed = None
            if cfg.images:
                argv += ["--stdin"]
            else:
                argv += ["--dataset", "fashion-mnist", "--loop"]
            proc = children.popen([*netns_exec_prefix(link.device_ns), *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.PIPE if cfg.images else None, text=True)
            threading.Thread(target=lambda: stderr_tail.extend(proc.stderr.read().splitlines()[-20:]),
                             daemon=True).start()
            if cfg.images:
                def feed_paths(n_max: int = 10_000) -> None:
                    try:
                        for i in range(n_max):
                            if proc.poll() is not None:
                                return
                            proc.stdin.write(cfg.images[i % len(cfg.images)] + "\n")
                            proc.stdin.flush()
                            time.sleep(0.05)
                    except (BrokenPipeError, OSError, ValueError):
                        return
                feed = threading.Thread(target=feed_paths, daemon=True)
                feed.start()
            goodput_b = TbfShape(rate_b).expected_goodput_mbps
            start = time.monotonic()
            hard_deadline = start + DEVICE_START_S + timeout_s * 2
            for line in proc.stdout:                          # bounded by the deadlines below
                if not line.startswith("{"):
                    continue
                rec = json.loads(line)
                if "request_id" not in rec:
                    summary = rec
                    break
                rec["t_s"] = time.monotonic() - start
                frames.append(rec)
                if switch_at is None and len(frames) >= FOLLOW_WARMUP_FRAMES:
                    link.set_rate(rate_b)
                    switch_at = (len(frames), time.monotonic() - start)
                    before = rec["planned"]
                    progress(f"  rate {rate_a:g} -> {rate_b:g} Mbps after frame {len(frames)} (planned {before})")
                elif switch_at is not None:
                    k, t = switch_at
                    bw = rec.get("bandwidth_mbps")
                    if estimate_at is None and bw and abs(bw - goodput_b) <= 0.25 * goodput_b:
                        estimate_at = (len(frames) - k, rec["t_s"] - t)
                    if changed_at is None and rec["planned"] != before:
                        changed_at = (len(frames) - k, rec["t_s"] - t, rec["planned"])
                    done = changed_at is not None and estimate_at is not None
                    if (done and len(frames) - k - changed_at[0] >= FOLLOW_AFTER_FRAMES) \
                            or rec["t_s"] - t > timeout_s or time.monotonic() > hard_deadline:
                        proc.send_signal(signal.SIGTERM)
            if summary is None:
                try:
                    rest, _ = proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rest, _ = proc.communicate()
                for line in (rest or "").splitlines():
                    if line.startswith("{"):
                        rec = json.loads(line)
                        if "request_id" in rec:
                            frames.append(rec)
                        else:
                            summary = rec
            proc.wait(timeout=30)
        finally:
            children.stop_all()
            cloud.stop(timeout_s=15)
    if switch_at is None:
        raise BenchError(f"rate change: the device stopped after {len(frames)} frames: "
                         + " | ".join(stderr_tail[-3:]))
    before = frames[switch_at[0] - 1]["planned"]
    return {
        "rate_a_mbps": rate_a, "rate_b_mbps": rate_b, "switch_after_frame": switch_at[0],
        "planned_before": before,
        "planned_after": changed_at[2] if changed_at else frames[-1]["planned"],
        "followed": changed_at is not None,
        "frames_to_follow": changed_at[0] if changed_at else None,
        "seconds_to_follow": changed_at[1] if changed_at else None,
        "estimate_frames": estimate_at[0] if estimate_at else None,
        "estimate_seconds": estimate_at[1] if estimate_at else None,
        "bandwidth_before": frames[switch_at[0] - 1].get("bandwidth_mbps"),
        "bandwidth_last": frames[-1].get("bandwidth_mbps"),
        "expected_goodput_b_mbps": TbfShape(rate_b).expected_goodput_mbps,
        "frame_check": check_frames(frames), "summary": summary,
        "frames": [{k: f.get(k) for k in ("request_id", "scheme", "planned", "bandwidth_mbps", "total_s",
                                          "replanned", "fallback", "t_s")} for f in frames],
    }
