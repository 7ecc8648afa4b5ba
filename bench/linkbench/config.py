"""What one `coinfer-bench link` run measures, and the command lines it builds from that.

`LinkBenchConfig` is the whole configuration (a frozen dataclass, one comment per default);
`cloud_args` and `device_common` turn it into `coinfer-cloud serve` and `coinfer-device`
arguments, so the table of flags lives in one place.
"""
from __future__ import annotations

from dataclasses import dataclass

SINGLE_END = ("device-only", "cloud-only")
AUTO = "auto"
DEVICE_START_S = 180.0       # bound on a device command's start-up (imports, model, head profiling)
PER_IMAGE_S = 120.0          # bound on one image end to end (vgg16_bn at 0.1 CPU is ~4 s)
FOLLOW_WARMUP_FRAMES = 5     # rate change: frames at the first rate before switching
FOLLOW_TIMEOUT_S = 60.0      # rate change: give up following after this long
FOLLOW_AFTER_FRAMES = 3      # rate change: frames kept after the switch was seen


class BenchError(RuntimeError):
    """A device or cloud command of the bench failed; the message has its stderr tail."""


@dataclass(frozen=True)
class LinkBenchConfig:
    model: str = "fmnist-vgg"
    rates_mbps: tuple[float, ...] = (0.5, 1.0, 2.0)     # tbf rates, 10^6 bit/s
    quota: float | None = 0.1                           # device CPU fraction; None: unconfined
    schemes: tuple[str, ...] = ()                       # P:C:B beyond the single ends and auto
    limit: int = 20                                     # images per scheme
    input_size: tuple[int, int] | None = None           # (H, W); None: the model's
    weights: str | None = None                          # state dict for both sides (None: shipped)
    num_classes: int | None = None                      # classifier width (both sides)
    db: str | None = None                               # auto: plan over this database's rows (None: the cloud's bank)
    recipe: str | None = None                           # auto: recipe prefix of those rows (None: the device's default)
    dataset_name: str | None = None                     # auto: dataset of the DB rows
    requirement: tuple[str, ...] = ()                   # auto: e.g. ("--max-accuracy-loss", "0.01")
    rate_change: tuple[float, float] | None = None      # (A, B) Mbps
    images: tuple[str, ...] = ()                        # image files (models without a dataset)
    synthetic_images: bool = False                      # images are generated, timing/bytes only
    cloud_profile_repeats: int = 3                      # cloud tail timing repeats at start-up
    cloud_threads: int = 1                              # cloud torch intra-op threads
    runtime: str = "torch"                              # device runtime: torch, or onnx (ONNX Runtime on `export`)
    export: str | None = None                           # onnx: the `coinfer-plan export` directory of the model
    pipeline_depth: int = 1                             # frames in flight (`--pipeline-depth`)
    objective: str = "latency"                          # auto: `--objective` latency or throughput

    @property
    def label(self) -> str:
        """The run's name in file names and tables: the model, with `-onnx` for the ONNX device."""
        return self.model if self.runtime == "torch" else f"{self.model}-{self.runtime}"

    def all_schemes(self) -> list[str]:
        out = [AUTO, *SINGLE_END]
        for s in self.schemes:
            if s not in out:
                out.append(s)
        return out


def cloud_args(cfg: LinkBenchConfig) -> list[str]:
    # one torch thread: with two OpenMP threads on two shared, busy cores the cloud's start-up
    # tail profile came out up to 100x slower than the tails it then served (0.34 s vs 2 ms)
    args = ["--model", cfg.model, "--profile-repeats", str(cfg.cloud_profile_repeats),
            "--threads", str(cfg.cloud_threads)]
    if cfg.weights:
        args += ["--weights", cfg.weights]
    if cfg.num_classes:
        args += ["--num-classes", str(cfg.num_classes)]
    if cfg.input_size:
        args += ["--input-size", f"{cfg.input_size[0]}x{cfg.input_size[1]}"]
    return args


def device_common(cfg: LinkBenchConfig, cloud: str, scheme: str) -> list[str]:
    argv = ["--cloud", cloud, "--model", cfg.model, "--scheme", scheme, "--json"]
    if cfg.quota:
        argv += ["--cpu-quota", f"{cfg.quota:g}"]
    argv += ["--runtime", cfg.runtime]     # always named: the device's default may depend on what is installed
    if cfg.runtime != "torch":     # the export carries the weights and class count; the device refuses them
        if not cfg.export:
            raise BenchError(f"runtime {cfg.runtime} needs the export directory (LinkBenchConfig.export)")
        argv += ["--export", cfg.export]
    else:
        if cfg.weights:
            argv += ["--weights", cfg.weights]
        if cfg.num_classes:
            argv += ["--num-classes", str(cfg.num_classes)]
    if cfg.pipeline_depth != 1:
        argv += ["--pipeline-depth", str(cfg.pipeline_depth)]
    if scheme == AUTO:
        argv += [*cfg.requirement, "--objective", cfg.objective]
        if cfg.recipe:
            argv += ["--recipe", cfg.recipe]
        if cfg.db:
            argv += ["--db", cfg.db]
        if cfg.dataset_name:
            argv += ["--dataset-name", cfg.dataset_name]
    return argv
