"""The device's network on ONNX Runtime, from a `coinfer-plan export` directory (see
planner.export for its layout).  Imports no torch: a device installed with
`pip install 'opt-coinfer[device]'` has none."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from device.heads import Heads, Runtime, TimedPass
from planner.registry import PartitionSpec, file_sha256, get_spec

FORMAT = "coinfer-export/1"       # planner.export.FORMAT (that module needs torch to import)
MANIFEST = "export.json"


class ExportDirError(ValueError):
    """An export directory that is missing, incomplete, altered or not of this format."""


def read_export_manifest(directory: str | Path) -> dict:
    root = Path(directory)
    path = root / MANIFEST
    if not path.is_file():
        raise ExportDirError(f"--export {str(root)!r}: no {MANIFEST}; write one with `coinfer-plan export`")
    try:
        m = json.loads(path.read_text())
    except ValueError as e:
        raise ExportDirError(f"{path}: not JSON ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ExportDirError(f"{path}: expected format {FORMAT}, got {m.get('format') if isinstance(m, dict) else m!r}")
    missing = [k for k in ("model", "num_classes", "input_shape", "segments", "classifier", "partitions",
                           "weights_sha256", "files_sha256") if k not in m]
    if missing:
        raise ExportDirError(f"{path}: missing {', '.join(missing)}")
    return m


class OnnxHeads(Heads):
    runtime = Runtime.ONNX

    def __init__(self, directory: str | Path, threads: int = 1):
        super().__init__()
        import onnxruntime as ort
        root = Path(directory)
        m = read_export_manifest(root)
        for name, want in m["files_sha256"].items():
            f = root / name
            if not f.is_file():
                raise ExportDirError(f"--export {str(root)!r}: {name} is missing")
            got = file_sha256(f)
            if got != want:
                raise ExportDirError(f"--export {str(root)!r}: {name} has sha256 {got}, the manifest "
                                     f"says {want}: the export was altered or is incomplete; export again")
        self.manifest = m
        self.spec = get_spec(m["model"])
        c, h, w = (int(v) for v in m["input_shape"])
        if c != self.spec.in_channels:
            raise ExportDirError(f"--export {str(root)!r}: {c} input channels, model {self.spec.name} has "
                                 f"{self.spec.in_channels}")
        self.input_hw = (h, w)
        self.num_classes = int(m["num_classes"])
        self.weights_sha256 = m["weights_sha256"]
        self.partitions = [PartitionSpec(index=p["index"], channels=p["channels"], after_pooling=p["after_pooling"],
                                         feature_end=-1, conv_feature=-1, cfg_index=-1, height=p["height"],
                                         width=p["width"], node=p.get("node", "")) for p in m["partitions"]]
        self._orders = [tuple(int(i) for i in p["channel_order"]) for p in m["partitions"]]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3

        def session(name: str):
            return ort.InferenceSession(str(root / name), opts, providers=["CPUExecutionProvider"])

        # segment k runs from cut k-1 (the image for k = 0) to cut k; the classifier from the last cut
        self._segments = [session(s["file"]) for s in sorted(m["segments"], key=lambda s: s["to_partition"])]
        self._classifier = session(m["classifier"])
        if len(self._segments) != len(self.partitions):
            raise ExportDirError(f"--export {str(root)!r}: {len(self._segments)} segments for "
                                 f"{len(self.partitions)} partitions")
        self.version = f"onnxruntime {ort.__version__}, {threads} threads"

    def _image(self, image: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(image, dtype=np.uint8)[None]
        if x.shape[1:] != (self.spec.in_channels, *self.input_hw):
            raise ValueError(f"image of shape {image.shape}; the export takes "
                             f"{(self.spec.in_channels, *self.input_hw)}")
        return x

    @staticmethod
    def _run(sess, x: np.ndarray) -> np.ndarray:
        return sess.run(None, {"x": x})[0]

    def head(self, image: np.ndarray, p: int) -> np.ndarray:
        self.partition(p)
        x = self._image(image)
        for sess in self._segments[:p + 1]:
            x = self._run(sess, x)
        return x[0]

    def logits(self, image: np.ndarray) -> np.ndarray:
        x = self._image(image)
        for sess in self._segments:
            x = self._run(sess, x)
        return self._run(self._classifier, x)[0]

    def order(self, p: int) -> tuple[int, ...]:
        self.partition(p)
        return self._orders[p]

    def timed_pass(self, image: np.ndarray) -> TimedPass:
        marks, cpu, maps = [], [], []
        c0, t0 = time.thread_time(), time.perf_counter()
        x = self._image(image)
        for p, sess in enumerate(self._segments):
            x = self._run(sess, x)
            marks.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            maps.append((p, x[0]))
        self._run(self._classifier, x)
        return TimedPass(marks, time.perf_counter() - t0, maps, cpu, time.thread_time() - c0)
