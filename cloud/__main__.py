"""`coinfer-cloud serve`: the cloud daemon (shared/CONTRACTS.md)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from cloud.server import EngineKind, ServerConfig, serve
from common.cli import parse_hw
from common.logs import LogFormat, configure_logging
from planner.models import model_names

_D = ServerConfig()     # the CLI's defaults are the config's


def parse_resources(text: str) -> tuple[tuple[str, float], ...]:
    """--replica-resources: a JSON object of Ray custom resource -> amount, e.g. '{"coinfer": 1}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"coinfer\": 1}}', got {text!r} ({e})")
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError(f"expected a non-empty JSON object like '{{\"coinfer\": 1}}', got {text!r}")
    for name, amount in value.items():
        if (isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount)
                or amount <= 0):
            raise argparse.ArgumentTypeError(f"resource {name!r}: expected a positive number, got {amount!r}")
        if not name or name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise argparse.ArgumentTypeError(f"expected custom resource names, got {name!r} (replicas take 1 CPU)")
    return tuple(sorted((name, float(amount)) for name, amount in value.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coinfer-cloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("serve", help="serve collaborative inference over gRPC")
    s.add_argument("--host", default=_D.host, help=f"address to bind (default {_D.host})")
    s.add_argument("--port", type=int, default=_D.port, help=f"port; 0 picks a free one (default {_D.port})")
    s.add_argument("--model", default=_D.model, help=f"one of {', '.join(model_names())}")
    s.add_argument("--weights", help="state dict file (default: the model's shipped weights)")
    s.add_argument("--num-classes", type=int, help="classifier width of --weights")
    s.add_argument("--artifact", action="append", default=[], metavar="FILE",
                   help="fine-tuned scheme artifact to serve (repeatable)")
    bank = s.add_mutually_exclusive_group()
    bank.add_argument("--bank", action="append", metavar="DIR",
                      help="bank of fine-tuned tails to serve (repeatable; default: the model's shipped bank)")
    bank.add_argument("--no-bank", action="store_true", help="serve no bank, not even the shipped one")
    s.add_argument("--input-size", type=parse_hw, help="image size HxW (default: the model's)")
    s.add_argument("--workers", type=int, default=_D.max_workers,
                   help="threads running decode and tail (open streams and waiting calls hold none)")
    s.add_argument("--max-concurrent-rpcs", type=int, default=_D.max_concurrent_rpcs,
                   help="calls and stream frames in progress beyond this get RESOURCE_EXHAUSTED")
    s.add_argument("--max-streams", type=int, default=_D.max_streams,
                   help="open InferStreams beyond this get RESOURCE_EXHAUSTED")
    s.add_argument("--stream-idle-s", type=float, default=_D.stream_idle_s,
                   help="end an InferStream that sent no frame for this long, seconds")
    s.add_argument("--max-message-bytes", type=int, default=_D.max_message_bytes)
    s.add_argument("--profile-repeats", type=int, default=_D.profile_repeats,
                   help="tail timing repeats per partition at start-up (0 skips)")
    s.add_argument("--grace-s", type=float, default=_D.grace_s, help="drain time on SIGTERM, seconds")
    s.add_argument("--threads", type=int, help="torch intra-op threads")
    s.add_argument("--max-inflight-bytes", type=int, default=_D.max_inflight_bytes,
                   help="memory reserved by calls in progress; beyond it RESOURCE_EXHAUSTED")
    s.add_argument("--tls-cert", metavar="FILE", help="PEM server certificate; enables TLS with --tls-key")
    s.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    s.add_argument("--tls-client-ca", metavar="FILE", help="PEM CA for client certificates (mutual TLS)")
    s.add_argument("--token-file", metavar="FILE", help="file with the bearer token calls must carry")
    s.add_argument("--metrics-port", type=int, metavar="P",
                   help="serve Prometheus metrics at http://HOST:P/metrics (0 picks a free port)")
    s.add_argument("--engine", choices=[k.value for k in EngineKind], default=_D.engine.value,
                   help="plain: decode and tails in this process; ray: in a Ray Serve deployment "
                        "(pip install 'opt-coinfer[ray]')")
    s.add_argument("--replicas", type=int, help=f"Ray Serve replicas of the tails (--engine ray; default {_D.replicas})")
    s.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join (--engine ray; default: start a local Ray instance)")
    s.add_argument("--replica-resources", type=parse_resources, metavar="JSON",
                   help="Ray custom resources each replica requires, e.g. '{\"coinfer\": 1}' with every node "
                        "started with --resources '{\"coinfer\": 1}': one replica per node (--engine ray)")
    s.add_argument("--replica-timeout-s", type=float, metavar="S",
                   help="send a request again when its replica has not answered in S seconds (a lost node; "
                        f"at most {_D.redispatch_tries} tries, then UNAVAILABLE; --engine ray; default "
                        f"{_D.replica_timeout_s})")
    s.add_argument("--batch-max-size", type=int, metavar="N",
                   help=f"requests a replica runs as one batch, 1 = off (--engine ray; default {_D.batch_max_size})")
    s.add_argument("--batch-wait-s", type=float, metavar="S",
                   help=f"how long a replica waits to fill a batch (--engine ray; default {_D.batch_wait_s})")
    s.add_argument("--log-format", choices=[f.value for f in LogFormat], default="text",
                   help="one line per event: text, or json for log shippers")
    s.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ray_only = {"--replicas": args.replicas, "--ray-address": args.ray_address,
                "--replica-resources": args.replica_resources, "--batch-max-size": args.batch_max_size,
                "--batch-wait-s": args.batch_wait_s, "--replica-timeout-s": args.replica_timeout_s}
    given = [flag for flag, value in ray_only.items() if value is not None]
    if args.engine != EngineKind.RAY.value and given:
        parser.error(f"{', '.join(given)}: only with --engine ray")
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    cfg = ServerConfig(host=args.host, port=args.port, model=args.model, weights=args.weights,
                       num_classes=args.num_classes, artifacts=tuple(args.artifact),
                       banks=() if args.no_bank else (tuple(args.bank) if args.bank else None),
                       input_hw=args.input_size, max_workers=args.workers,
                       max_concurrent_rpcs=args.max_concurrent_rpcs, max_streams=args.max_streams,
                       stream_idle_s=args.stream_idle_s, metrics_port=args.metrics_port,
                       max_message_bytes=args.max_message_bytes,
                       profile_repeats=args.profile_repeats, grace_s=args.grace_s,
                       torch_threads=args.threads, max_inflight_bytes=args.max_inflight_bytes,
                       tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                       token_file=args.token_file, engine=EngineKind(args.engine),
                       replicas=_D.replicas if args.replicas is None else args.replicas,
                       ray_address=args.ray_address, replica_resources=args.replica_resources or (),
                       replica_timeout_s=_D.replica_timeout_s if args.replica_timeout_s is None
                       else args.replica_timeout_s,
                       batch_max_size=_D.batch_max_size if args.batch_max_size is None else args.batch_max_size,
                       batch_wait_s=_D.batch_wait_s if args.batch_wait_s is None else args.batch_wait_s)
    try:
        return serve(cfg)
    except (ValueError, OSError) as e:
        print(f"coinfer-cloud: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
