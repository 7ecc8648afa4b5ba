"""`coinfer-device`: run the head on the device, the tail in the cloud (shared/CONTRACTS.md)."""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import signal
import sys
import threading

import grpc
import torch

from common import codec
from device.client import ClientConfig, CloudClient
from device.cpu_quota import QuotaUnavailable
from device.inputs import (DATASETS, InputError, dataset_images, dataset_stream, file_images, stdin_images,
                           watch_images)
from device.runner import DeviceRunner, FrameResult, summarize
from planner.models import WeightsError, build_model, model_names
from planner.scheme import Scheme, SchemeError

log = logging.getLogger("coinfer-device")

ROW = "{:>5} {:>11} {:>4} {:>5} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}  {}"


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud", metavar="HOST:PORT", help="address of coinfer-cloud serve")
    p.add_argument("--model", default="fmnist-vgg", help=f"one of {', '.join(model_names())}")
    p.add_argument("--weights", help="state dict file (default: the model's shipped weights)")
    p.add_argument("--num-classes", type=int, help="classifier width of --weights")
    p.add_argument("--artifact", metavar="FILE", help="fine-tuned scheme artifact (same as the cloud's)")
    p.add_argument("--scheme", default="device-only",
                   help="P:C:B, device-only, cloud-only or auto (default: device-only for infer, auto for run)")
    req = p.add_mutually_exclusive_group()
    req.add_argument("--max-accuracy-loss", type=float, metavar="A",
                     help="auto: the fastest scheme losing at most A top-1 accuracy (default 0.01)")
    req.add_argument("--latency-ratio", type=float, metavar="R",
                     help="auto: the most accurate scheme within R x the best single-end latency")
    req.add_argument("--max-latency-s", type=float, metavar="S",
                     help="auto: the most accurate scheme within S seconds")
    p.add_argument("--db", metavar="FILE", help="auto: accuracy database (default: the model's shipped one)")
    p.add_argument("--recipe", default="ft0-", metavar="PREFIX",
                   help="auto: database rows this device and cloud can run (default ft0-: the "
                        "unmodified network, no fine-tuning)")
    p.add_argument("--hysteresis", type=float, default=0.25,
                   help="auto: re-plan when bandwidth moves beyond x(1 +- H) of the planned one")
    p.add_argument("--probe-interval-s", type=float, default=5.0, help="auto: active link probe period")
    p.add_argument("--dataset-name", metavar="NAME",
                   help="auto: dataset of the accuracy rows (default: the model's, e.g. fashion-mnist)")
    p.add_argument("--profile-out", metavar="FILE", help="auto: write the live profile (project format) here")
    p.add_argument("--cpu-quota", type=float, metavar="F",
                   help="root only: confine this process to F of one CPU before profiling (a slower device)")
    p.add_argument("--zstd-level", type=int, default=codec.CodecConfig().zstd_level)
    p.add_argument("--timeout-s", type=float, default=30.0, help="deadline per call, seconds")
    p.add_argument("--tls-ca", metavar="FILE", help="PEM CA of the cloud's certificate; enables TLS")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--token-file", metavar="FILE", help="file with the bearer token for the cloud")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads on the device (default 1, as on a small device)")
    p.add_argument("--json", action="store_true",
                   help="one JSON line per image, then the summary as the last line")
    p.add_argument("--quiet", action="store_true", help="summary only")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coinfer-device", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("infer", help="classify a dataset slice or image files")
    add_common(p)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (instead of --dataset)")
    p.add_argument("--dataset", choices=DATASETS, help="use the dataset's test images")
    p.add_argument("--limit", type=int, help="images to take from --dataset")
    p.add_argument("--offset", type=int, default=0, help="first --dataset image")
    p.add_argument("--lossless", action="store_true",
                   help="send float32 feature maps (reference mode, ignores B)")
    r = sub.add_parser("run", help="daemon: classify a stream of images until stopped")
    add_common(r)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=DATASETS, help="stream the dataset's test images")
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


def requirement_of(args: argparse.Namespace):
    from device.live import RequirementKind, RequirementSpec
    if args.latency_ratio is not None:
        return RequirementSpec(RequirementKind.LATENCY_RATIO, args.latency_ratio)
    if args.max_latency_s is not None:
        return RequirementSpec(RequirementKind.MAX_LATENCY_S, args.max_latency_s)
    return RequirementSpec(RequirementKind.MAX_ACCURACY_LOSS,
                           0.01 if args.max_accuracy_loss is None else args.max_accuracy_loss)


def fetch_model_info(client: CloudClient, model: str):
    """The cloud's ModelInfo for `model`, or None when the cloud cannot be reached now."""
    from device.runner import FALLBACK_CODES
    try:
        info = client.server_info()
    except grpc.RpcError as e:
        if e.code() not in FALLBACK_CODES:
            raise
        log.warning("cloud unreachable (%s); running device-only until it answers", e.code().name)
        return None
    served = {m.name: m for m in info.models}
    if model not in served:
        raise InputError(f"the cloud serves {', '.join(served)}, not {model}")
    return served[model]


class Device:
    """Everything one device command sets up: model, client, runner, and for auto the session."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        if args.cpu_quota is not None:   # refuse before loading anything
            from device.cpu_quota import require_cpu_quota
            require_cpu_quota()
        self.scheme = None if args.scheme == "auto" else Scheme.parse(args.scheme)
        torch.set_num_threads(args.threads)
        self.artifact = None
        if args.artifact:
            from planner.artifact import load_artifact
            self.artifact = load_artifact(args.artifact)
        self.model = build_model(args.model, num_classes=args.num_classes, weights=args.weights)
        needs_cloud = self.scheme != Scheme.parse("device-only")
        if needs_cloud and not args.cloud:
            raise InputError(f"scheme {args.scheme} needs --cloud HOST:PORT")
        self.client = CloudClient(ClientConfig(args.cloud, timeout_s=args.timeout_s, tls_ca=args.tls_ca,
                                               tls_cert=args.tls_cert, tls_key=args.tls_key,
                                               token_file=args.token_file)) if needs_cloud else None
        if self.client is not None:
            self.client.check_tls()      # a TLS failure is an error before any frame, not an outage
        self.runner = DeviceRunner(self.model, args.model, self.client, codec.CodecConfig(args.zstd_level),
                                   self.artifact)
        self.quota = None
        if args.cpu_quota is not None:   # after imports and model loading, before profiling
            from device.cpu_quota import confine_to_cpu_fraction
            self.quota = confine_to_cpu_fraction(args.cpu_quota)
        self.session = self._live_session() if self.scheme is None else None

    def _live_session(self):
        from device.live import LivePlanner, LiveState, cached_device_times, runnable_errors
        from device.session import LiveSession
        from planner.evaluate import default_db_path
        if self.artifact is not None:
            raise InputError("--scheme auto plans over the unmodified model; drop --artifact")
        args, spec = self.args, self.model.spec
        info = fetch_model_info(self.client, args.model)       # None while the cloud is unreachable
        hw = tuple(info.input_shape[1:]) if info is not None else spec.input_hw
        weights_key = args.weights or str(spec.default_weights)
        device = cached_device_times(self.model, f"{args.model}:{weights_key}", hw, args.cpu_quota)
        db = args.db or default_db_path(args.model)
        errors, base = runnable_errors(db, args.model, args.dataset_name or spec.dataset or "", args.recipe)
        state = LiveState(args.model, self.model, hw, device, info, base)
        planner = LivePlanner(errors, base, requirement_of(args), hysteresis=args.hysteresis)
        session = LiveSession(self.runner, self.client, state, planner, probe_interval_s=args.probe_interval_s)
        session.start()
        return session

    def frame(self, image, label):
        """(FrameResult, extra JSON fields) for one image."""
        if self.session is None:
            return self.runner.run(self.scheme, image, label, lossless=getattr(self.args, "lossless", False)), {}
        f = self.session.process(image, label)
        return f.result, {"planned": f.planned, "bandwidth_mbps": f.bandwidth_mbps,
                          "link_rtt_s": f.rtt_s, "replanned": f.replanned}

    def close(self) -> None:
        if self.session is not None:
            if self.args.profile_out:
                self.session.state.write_profile(self.args.profile_out)
            self.session.close()
        if self.client is not None:
            self.client.close()
        if self.quota is not None:
            self.quota.release()


def process(dev: Device, frames, stop: threading.Event | None = None, interval_s: float = 0.0) -> list[FrameResult]:
    results = []
    for i, (image, label) in enumerate(frames):
        r, extra = dev.frame(image, label)
        results.append(r)
        if not dev.args.quiet:
            print_frame(i, r, dev.args.json, extra)
        if stop is not None and (stop.is_set() or (interval_s and stop.wait(interval_s))):
            break
    return results


def print_summary(dev: Device, results: list[FrameResult]) -> None:
    summary = summarize(results)
    if dev.session is not None:
        link = dev.session.state.link
        summary.update(bandwidth_mbps=link.bandwidth_mbps, link_rtt_s=link.rtt_s, plans=dev.session.planner.plans)
    if dev.args.json:
        print(json.dumps(summary), flush=True)
        return
    acc, lat = summary["top1_accuracy"], summary["latency_s"]
    if not results:
        print("0 images")
        return
    print(f"{summary['images']} images, scheme {summary['scheme']} {summary['scheme_counts']}, "
          f"top-1 {'n/a' if acc is None else f'{acc:.4f}'}, latency p50 {lat['p50']:.5f} s "
          f"p90 {lat['p90']:.5f} s, {summary['wire_bytes_mean']:.0f} bytes sent per image, "
          f"{summary['fallbacks']} fallbacks")


def run_infer(args: argparse.Namespace) -> int:
    if bool(args.images) == bool(args.dataset):
        raise InputError("give either --dataset NAME or IMAGE files, not both or neither")
    dev = Device(args)
    try:
        hw = dev.session.state.input_hw if dev.session else dev.model.spec.input_hw
        frames = (dataset_images(args.dataset, dev.model.spec, hw, args.limit, args.offset) if args.dataset
                  else file_images(args.images, dev.model.spec, hw))
        results = process(dev, frames)
    finally:
        dev.close()
    print_summary(dev, results)
    return 0


def run_daemon(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dev = Device(args)
    try:
        if args.metrics_port:
            from device.metrics import serve_device_metrics
            serve_device_metrics(dev, args.metrics_port)
        spec = dev.model.spec
        hw = dev.session.state.input_hw if dev.session else spec.input_hw
        sources = {"dataset": lambda: dataset_stream(args.dataset, spec, hw, args.loop, stop),
                   "watch": lambda: watch_images(args.watch, spec, hw, stop),
                   "stdin": lambda: stdin_images(spec, hw, stop)}
        frames = sources[next(k for k in sources if getattr(args, k))]()
        if args.limit is not None:
            frames = itertools.islice(frames, args.limit)
        results = process(dev, frames, stop, args.interval_s)
    finally:
        dev.close()
    print_summary(dev, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
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
