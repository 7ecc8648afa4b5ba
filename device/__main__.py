"""`coinfer-device`: run the head on the device, the tail in the cloud (shared/CONTRACTS.md)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import grpc
import torch

from device import codec
from device.client import ClientConfig, CloudClient
from device.inputs import DATASETS, InputError, dataset_images, file_images
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
                   help="P:C:B, device-only, cloud-only or auto (default device-only)")
    p.add_argument("--zstd-level", type=int, default=codec.CodecConfig().zstd_level)
    p.add_argument("--timeout-s", type=float, default=30.0, help="deadline per call, seconds")
    p.add_argument("--tls-ca", metavar="FILE", help="PEM CA of the cloud's certificate; enables TLS")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--token-file", metavar="FILE", help="file with the bearer token for the cloud")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads on the device (default 1, as on a small device)")
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
    p.add_argument("--json", action="store_true",
                   help="one JSON line per image, then the summary as the last line")
    p.add_argument("--quiet", action="store_true", help="summary only")
    return parser


def print_frame(i: int, r: FrameResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.as_dict()), flush=True)
        return
    if i == 0:
        print(ROW.format("image", "scheme", "pred", "label", "head_s", "encode_s", "bytes",
                         "rtt_s", "decode_s", "tail_s", "total_s", "note"))
    print(ROW.format(i, r.scheme, r.top1, "-" if r.label is None else r.label,
                     f"{r.head_s:.5f}", f"{r.encode_s:.5f}", r.wire_bytes, f"{r.rtt_s:.5f}",
                     f"{r.decode_s:.5f}", f"{r.tail_s:.5f}", f"{r.total_s:.5f}",
                     f"fallback ({r.fallback})" if r.fallback else ""), flush=True)


def run_infer(args: argparse.Namespace) -> int:
    if args.scheme == "auto":
        print("coinfer-device: --scheme auto is not yet available (live planning)", file=sys.stderr)
        return 2
    scheme = Scheme.parse(args.scheme)
    if bool(args.images) == bool(args.dataset):
        raise InputError("give either --dataset NAME or IMAGE files, not both or neither")
    torch.set_num_threads(args.threads)
    artifact = None
    if args.artifact:
        from planner.artifact import load_artifact
        artifact = load_artifact(args.artifact)
    model = build_model(args.model, num_classes=args.num_classes, weights=args.weights)
    hw = model.spec.input_hw
    frames = (dataset_images(args.dataset, model.spec, hw, args.limit, args.offset) if args.dataset
              else file_images(args.images, model.spec, hw))
    needs_cloud = scheme != Scheme.parse("device-only")
    if needs_cloud and not args.cloud:
        raise InputError(f"scheme {scheme} needs --cloud HOST:PORT")
    client = CloudClient(ClientConfig(args.cloud, timeout_s=args.timeout_s, tls_ca=args.tls_ca,
                                      tls_cert=args.tls_cert, tls_key=args.tls_key,
                                      token_file=args.token_file)) if needs_cloud else None
    runner = DeviceRunner(model, args.model, client, codec.CodecConfig(args.zstd_level), artifact)
    results = []
    try:
        for i, (image, label) in enumerate(frames):
            r = runner.run(scheme, image, label, lossless=args.lossless)
            results.append(r)
            if not args.quiet:
                print_frame(i, r, args.json)
    finally:
        if client is not None:
            client.close()
    summary = summarize(results)
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        acc = summary["top1_accuracy"]
        lat = summary["latency_s"]
        print(f"{summary['images']} images, scheme {summary['scheme']}, "
              f"top-1 {'n/a' if acc is None else f'{acc:.4f}'}, latency p50 {lat['p50']:.5f} s "
              f"p90 {lat['p90']:.5f} s, {summary['wire_bytes_mean']:.0f} bytes sent per image")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return {"infer": run_infer}[args.command](args)
    except grpc.RpcError as e:
        print(f"coinfer-device: cloud call failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except (SchemeError, InputError, WeightsError, ValueError, OSError) as e:
        print(f"coinfer-device: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
