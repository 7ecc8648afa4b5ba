"""`coinfer-device`: run the head on the device, the tail in the cloud (shared/CONTRACTS.md)."""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass

import grpc

from common.logs import LogFormat, configure_logging
from device.app import Device, DeviceConfig, TailChoice
from device.heads import Runtime
from device.cpu_quota import QuotaUnavailable
from device.inputs import (InputError, check_dataset, dataset_images, dataset_stream, file_images, stdin_images,
                           watch_images)
from device.runner import FrameResult, summarize
from planner.latency import Cost
from planner.registry import WeightsError, model_names
from planner.requirement import RequirementSpec
from planner.scheme import SchemeError

_D = DeviceConfig()     # the CLI's defaults are the config's

log = logging.getLogger("coinfer-device")

ROW = "{:>5} {:>11} {:>4} {:>5} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}  {}"


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud", metavar="HOST:PORT", help="address of coinfer-cloud serve")
    p.add_argument("--model", default=_D.model, help=f"one of {', '.join(model_names())}")
    p.add_argument("--weights", help="state dict file (default: the model's shipped weights)")
    p.add_argument("--num-classes", type=int, help="classifier width of --weights")
    p.add_argument("--artifact", metavar="FILE", help="fine-tuned scheme artifact (same as the cloud's)")
    p.add_argument("--scheme", default=_D.scheme,
                   help="P:C:B, device-only, cloud-only or auto (default: device-only for infer, auto for run)")
    req = p.add_mutually_exclusive_group()
    req.add_argument("--max-accuracy-loss", type=float, metavar="A",
                     help=f"auto: the fastest scheme losing at most A top-1 accuracy (default {_D.requirement.value})")
    req.add_argument("--latency-ratio", type=float, metavar="R",
                     help="auto: the most accurate scheme within R x the best single-end latency")
    req.add_argument("--max-latency-s", type=float, metavar="S",
                     help="auto: the most accurate scheme within S seconds")
    p.add_argument("--tail", choices=[t.value for t in TailChoice], default=_D.tail.value,
                   help="split frames: ask the cloud for its fine-tuned bank tail of the scheme (bank, the "
                        "default; a scheme the bank lacks runs the unmodified tail) or the unmodified tail")
    p.add_argument("--recipe", default=_D.recipe, metavar="PREFIX",
                   help="auto: plan over the accuracy database's rows of this recipe prefix (e.g. ft0-: the "
                        "unmodified network) instead of the cloud's bank")
    p.add_argument("--db", metavar="FILE",
                   help="auto: plan over this accuracy database's rows (--recipe, default ft0-) instead of the "
                        "cloud's bank (with --recipe alone: the model's shipped database)")
    p.add_argument("--hysteresis", type=float, default=_D.hysteresis,
                   help="auto: re-plan when bandwidth moves beyond x(1 +- H) of the planned one")
    p.add_argument("--probe-interval-s", type=float, default=_D.probe_interval_s, help="auto: active link probe period")
    p.add_argument("--dataset-name", metavar="NAME",
                   help="auto: dataset of the accuracy rows (default: the model's, e.g. fashion-mnist)")
    p.add_argument("--profile-out", metavar="FILE", help="auto: write the live profile (project format) here")
    p.add_argument("--cpu-quota", type=float, metavar="F",
                   help="root only: confine this process to F of one CPU before profiling (a slower device)")
    p.add_argument("--zstd-level", type=int, default=_D.zstd_level)
    p.add_argument("--timeout-s", type=float, default=_D.timeout_s, help="deadline per call, seconds")
    p.add_argument("--tls-ca", metavar="FILE", help="PEM CA of the cloud's certificate; enables TLS")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--token-file", metavar="FILE", help="file with the bearer token for the cloud")
    p.add_argument("--threads", type=int, default=_D.threads,
                   help="intra-op threads of the runtime on the device (default 1, as on a small device)")
    p.add_argument("--runtime", choices=[r.value for r in Runtime], default=None,
                   help="what runs the network: torch (the default where it is installed) or onnx (ONNX Runtime "
                        "on a `coinfer-plan export` directory, --export; torch is never imported)")
    p.add_argument("--export", metavar="DIR", help="--runtime onnx: the directory `coinfer-plan export` wrote")
    p.add_argument("--pipeline-depth", type=int, default=_D.pipeline_depth, metavar="K",
                   help="up to K frames in flight over one stream: the head of the next frame runs while "
                        "earlier ones are on the link and in the cloud; answers in frame order (default 1: "
                        "one call a frame)")
    p.add_argument("--objective", choices=[c.value for c in Cost], default=_D.objective.value,
                   help="auto: plan for a frame's latency (default) or the stream's frame rate at "
                        "--pipeline-depth (its slowest stage); a latency bound then bounds the frame period")
    p.add_argument("--json", action="store_true",
                   help="one JSON line per image, then the summary as the last line")
    p.add_argument("--quiet", action="store_true", help="summary only")
    p.add_argument("--log-format", choices=[f.value for f in LogFormat], default="text",
                   help="log lines on stderr as text or one JSON object each (for log shippers)")
    p.add_argument("-v", "--verbose", action="store_true")


def config_of(args: argparse.Namespace) -> DeviceConfig:
    """The parsed flags as a DeviceConfig (output flags stay with the CLI)."""
    return DeviceConfig(
        cloud=args.cloud, model=args.model, weights=args.weights, num_classes=args.num_classes,
        artifact=args.artifact, scheme=args.scheme,
        requirement=RequirementSpec.from_flags(args.latency_ratio, args.max_latency_s, args.max_accuracy_loss,
                                               default_accuracy_loss=_D.requirement.value),
        tail=TailChoice(args.tail), db=args.db, recipe=args.recipe, dataset_name=args.dataset_name,
        hysteresis=args.hysteresis, probe_interval_s=args.probe_interval_s, profile_out=args.profile_out,
        cpu_quota=args.cpu_quota, zstd_level=args.zstd_level, timeout_s=args.timeout_s, tls_ca=args.tls_ca,
        tls_cert=args.tls_cert, tls_key=args.tls_key, token_file=args.token_file, threads=args.threads,
        lossless=getattr(args, "lossless", False), runtime=Runtime(args.runtime) if args.runtime else None,
        export=args.export, pipeline_depth=args.pipeline_depth, objective=Cost(args.objective))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coinfer-device", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("infer", help="classify a dataset slice or image files")
    add_common(p)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (instead of --dataset)")
    p.add_argument("--dataset", metavar="SPEC",
                   help="use a dataset's test images: fashion-mnist or imagefolder:DIR (DIR/test/CLASS/*.png|jpg)")
    p.add_argument("--limit", type=int, help="images to take from --dataset")
    p.add_argument("--offset", type=int, default=0, help="first --dataset image")
    p.add_argument("--lossless", action="store_true",
                   help="send float32 feature maps (reference mode, ignores B)")
    r = sub.add_parser("run", help="daemon: classify a stream of images until stopped")
    add_common(r)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="SPEC",
                     help="stream a dataset's test images: fashion-mnist or imagefolder:DIR")
    src.add_argument("--watch", metavar="DIR", help="classify image files appearing in DIR (existing ones first)")
    src.add_argument("--stdin", action="store_true", help="read image paths from standard input, one a line")
    r.add_argument("--limit", type=int, help="stop after N images")
    r.add_argument("--loop", action="store_true", help="--dataset: start over at the end")
    r.add_argument("--interval-s", type=float, default=0.0, help="pause between frames, seconds")
    r.add_argument("--metrics-port", metavar="[HOST:]P", help="Prometheus /metrics on HOST (default 127.0.0.1):P")
    r.set_defaults(scheme="auto")
    return parser


def print_frame(i: int, r: FrameResult, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        print(json.dumps({**r.as_dict(), **(extra or {})}), flush=True)
        return
    if i == 0:
        print(ROW.format("image", "scheme", "pred", "label", "head_s", "encode_s", "bytes",
                         "rtt_s", "decode_s", "tail_s", "total_s", "note"))
    note = f"fallback ({r.fallback})" if r.fallback else ""
    if extra and extra.get("bandwidth_mbps") is not None:
        note = f"bw {extra['bandwidth_mbps']:.3f} Mbps" + (" replanned" if extra.get("replanned") else "") \
               + (f"; {note}" if note else "")
    print(ROW.format(i, r.scheme, r.top1, "-" if r.label is None else r.label,
                     f"{r.head_s:.5f}", f"{r.encode_s:.5f}", r.wire_bytes, f"{r.rtt_s:.5f}",
                     f"{r.decode_s:.5f}", f"{r.tail_s:.5f}", f"{r.total_s:.5f}", note), flush=True)


@dataclass
class Processed:
    """What a run of frames gave: every frame's result in order, the wall and process CPU
    seconds (every thread) from the first frame's start to the last answer, and under
    --cpu-quota the cgroup's CFS periods and throttling over that span."""

    results: list[FrameResult]
    wall_s: float
    cpu_s: float
    throttling: dict | None = None


def process(dev: Device, frames, args: argparse.Namespace, stop: threading.Event | None = None,
            interval_s: float = 0.0) -> Processed:
    """Every frame's result, in order, and the wall and process CPU seconds (every thread)
    from the first frame's start to the last answer.  On `stop` no new frame starts; those in
    flight are still answered."""
    start: list[tuple] = []      # (wall, process CPU, cgroup throttling) at the first frame's start

    def source():
        for i, item in enumerate(frames):
            if i and stop is not None and (stop.is_set() or (interval_s and stop.wait(interval_s))):
                return
            if not start:
                start.append((time.perf_counter(), time.process_time(),
                              dev.quota.throttling() if dev.quota is not None else None))
            yield item

    results = []
    for i, (r, extra) in enumerate(dev.frames(source())):
        results.append(r)
        if not args.quiet:
            print_frame(i, r, args.json, extra)
    if not start:
        return Processed(results, 0.0, 0.0)
    wall0, cpu0, throttled0 = start[0]
    end = dev.quota.throttling() if throttled0 is not None else None
    return Processed(results, time.perf_counter() - wall0, time.process_time() - cpu0,
                     None if end is None else {"periods": end[0] - throttled0[0],
                                               "throttled_periods": end[1] - throttled0[1],
                                               "throttled_s": end[2] - throttled0[2]})


def print_summary(dev: Device, run: Processed, as_json: bool) -> None:
    results = run.results
    summary = summarize(results, run.wall_s, run.cpu_s)
    if run.throttling is not None:
        summary["cpu_throttling"] = run.throttling
    if dev.session is not None:
        link = dev.session.state.link
        summary.update(bandwidth_mbps=link.bandwidth_mbps, link_rtt_s=link.rtt_s, plans=dev.session.planner.plans)
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    acc, lat = summary["top1_accuracy"], summary["latency_s"]
    if not results:
        print("0 images")
        return
    print(f"{summary['images']} images, scheme {summary['scheme']} {summary['scheme_counts']}, "
          f"top-1 {'n/a' if acc is None else f'{acc:.4f}'}, latency p50 {lat['p50']:.5f} s "
          f"p90 {lat['p90']:.5f} s, {summary['wire_bytes_mean']:.0f} bytes sent per image, "
          f"{summary['fallbacks']} fallbacks" + (f", tail {summary['tail']}" if summary["tail"] else "")
          + (f", {summary['throughput_fps']:.2f} frames/s" if summary["throughput_fps"] else ""))


def run_infer(args: argparse.Namespace) -> int:
    if bool(args.images) == bool(args.dataset):
        raise InputError("give either --dataset NAME or IMAGE files, not both or neither")
    if args.dataset:
        check_dataset(args.dataset)
    dev = Device(config_of(args))
    try:
        hw = dev.input_hw
        frames = (dataset_images(args.dataset, dev.heads.spec, hw, args.limit, args.offset) if args.dataset
                  else file_images(args.images, dev.heads.spec, hw))
        run = process(dev, frames, args)
    finally:
        dev.close()
    print_summary(dev, run, args.json)
    return 0


def run_daemon(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.dataset:
        check_dataset(args.dataset)
    dev = Device(config_of(args))
    try:
        if args.metrics_port:
            from device.metrics import serve_device_metrics
            serve_device_metrics(dev, args.metrics_port)
        spec, hw = dev.heads.spec, dev.input_hw
        sources = {"dataset": lambda: dataset_stream(args.dataset, spec, hw, args.loop, stop),
                   "watch": lambda: watch_images(args.watch, spec, hw, stop),
                   "stdin": lambda: stdin_images(spec, hw, stop)}
        frames = sources[next(k for k in sources if getattr(args, k))]()
        if args.limit is not None:
            frames = itertools.islice(frames, args.limit)
        run = process(dev, frames, args, stop, args.interval_s)
    finally:
        dev.close()
    print_summary(dev, run, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return {"infer": run_infer, "run": run_daemon}[args.command](args)
    except grpc.RpcError as e:
        print(f"coinfer-device: cloud call failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except QuotaUnavailable as e:
        print(f"coinfer-device: --cpu-quota: {e}", file=sys.stderr)
        return 2
    except (SchemeError, InputError, WeightsError, ValueError, OSError) as e:
        print(f"coinfer-device: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
