"""Feature-map codec: the wire payload of coinfer.v1.FeatureMap and coinfer.v1.Image.

Split inference sends the partition's feature map of one image as
  keep C channels -> per-channel min-max affine quantization to B bits -> MSB-first
  bit-packing into exactly ceil(C*H*W*B/8) bytes -> one zstd frame,
with the per-channel offsets (channel minimum) and scales (value step per code) as side
data. The lossless reference mode (`bits=None`) sends little-endian float32 instead.

Quantization, per kept channel (the trainer's straight-through fake-quantizer uses the
same float32 arithmetic, so train and wire agree bit for bit):
    lo = min(x), hi = max(x), levels = 2**B - 1, scale = (hi - lo) / levels  (0 if constant)
    code = clip(round_half_even((x - lo) / scale), 0, levels)                 (0 if scale == 0)
    x'   = lo + code * scale

Everything is vectorised with numpy. Decoding validates every field against the expected
partition shape and raises `CodecError` naming the offending proto field; decompression
never produces (or allocates) more than the expected size plus one byte.

This module is long because it is the whole wire codec in one place, read as one unit: the
quantizer, the bit packers for every width, zstd framing with its bounds, and the validation
of every field on the way in.
"""
from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zstandard

from protos.coinfer.v1 import coinfer_pb2

log = logging.getLogger(__name__)

MIN_BITS = 1
MAX_BITS = 8
MIN_ZSTD_LEVEL = -(1 << 17)          # zstd's fastest negative level (ZSTD_minCLevel)
MAX_ZSTD_LEVEL = zstandard.MAX_COMPRESSION_LEVEL


class CodecError(ValueError):
    """A feature map or image that cannot be encoded or decoded.

    `field` names the offending proto field (e.g. "feature_map.bits"); the servicer maps
    this exception to INVALID_ARGUMENT with `str(error)` as the detail.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # picklable despite the two-argument constructor
        return (type(self), (self.field, self.message))


class Encoding(enum.Enum):
    """How a feature map's values travel; values equal coinfer.v1.Encoding's numbers."""

    QUANTIZED = coinfer_pb2.ENCODING_QUANTIZED   # per-channel affine, B bits, bit-packed
    FLOAT32 = coinfer_pb2.ENCODING_FLOAT32       # lossless reference, little-endian float32


@dataclass(frozen=True)
class CodecConfig:
    """Codec settings shared by the device and the benchmarks."""

    zstd_level: int = 1   # zstd compression level; 1 is fast, higher is smaller and slower

    def __post_init__(self) -> None:
        if (not isinstance(self.zstd_level, int) or isinstance(self.zstd_level, bool)
                or not MIN_ZSTD_LEVEL <= self.zstd_level <= MAX_ZSTD_LEVEL):
            raise ValueError(f"zstd_level must be an int in {MIN_ZSTD_LEVEL}..{MAX_ZSTD_LEVEL}, "
                             f"got {self.zstd_level!r}")


_EMPTY_U32 = np.zeros(0, dtype=np.uint32)
_EMPTY_F32 = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class EncodedFeatureMap:
    """One image's feature map at partition P, as in coinfer.v1.FeatureMap."""

    partition: int                  # P, 0-based conv index of the cut
    channels: int                   # C, kept channels
    height: int                     # H, rows
    width: int                      # W, columns
    encoding: Encoding
    bits: int                       # B in 1..8 for QUANTIZED; 0 for FLOAT32
    channel_indices: np.ndarray = field(default_factory=lambda: _EMPTY_U32)  # (C,) or (0,) uint32, ascending; empty = 0..C-1
    offsets: np.ndarray = field(default_factory=lambda: _EMPTY_F32)  # (C,) float32 channel minima; (0,) for FLOAT32
    scales: np.ndarray = field(default_factory=lambda: _EMPTY_F32)   # (C,) float32 steps >= 0; (0,) for FLOAT32
    payload: bytes = b""            # one zstd frame

    @property
    def packed_bytes(self) -> int:
        """Payload size before zstd: ceil(C*H*W*B/8), or C*H*W*4 for FLOAT32."""
        return expected_payload_bytes(self.encoding, self.channels, self.height, self.width, self.bits)

    @property
    def wire_bytes(self) -> int:
        """Serialized size of the coinfer.v1.FeatureMap message: payload plus side data
        (offsets, scales, channel indices) and the small header fields, as they travel."""
        n = _len_field(1, _varint_len(self.partition), skip=self.partition == 0)
        n += _len_field(2, _varint_len(self.channels), skip=self.channels == 0)
        n += _len_field(3, _varint_len(self.height), skip=self.height == 0)
        n += _len_field(4, _varint_len(self.width), skip=self.width == 0)
        n += _len_field(5, _varint_len(self.encoding.value))
        n += _len_field(6, _varint_len(self.bits), skip=self.bits == 0)
        idx = np.asarray(self.channel_indices, dtype=np.uint64)
        idx_len = idx.size + sum(int((idx >> np.uint64(7 * k)).astype(bool).sum()) for k in range(1, 5))
        n += _packed_field(idx_len)                      # varints: 1 byte + 1 per further 7 bits
        n += _packed_field(4 * len(self.offsets)) + _packed_field(4 * len(self.scales))
        n += _packed_field(len(self.payload))
        return n


# --- protobuf size helpers (wire_bytes without building the message) -------------------

def _varint_len(v: int) -> int:
    return max(1, (int(v).bit_length() + 6) // 7)


def _len_field(tag: int, value_len: int, skip: bool = False) -> int:
    """A scalar field: one tag byte (tags < 16) plus its varint, absent when default."""
    return 0 if skip else 1 + value_len


def _packed_field(body_len: int) -> int:
    """A length-delimited field (bytes or packed repeated): tag, length, body; absent when empty."""
    return 0 if body_len == 0 else 1 + _varint_len(body_len) + body_len


# --- quantization -----------------------------------------------------------------------

def _channel_params(lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (offsets, scales) float32 from channel minima and maxima."""
    levels = np.float32((1 << bits) - 1)
    lo = lo.astype(np.float32, copy=False)
    with np.errstate(over="ignore"):
        scales = (hi.astype(np.float32, copy=False) - lo) / levels   # float32; 0 for constant channels
    if not np.isfinite(scales).all():
        bad = np.flatnonzero(~np.isfinite(scales)).tolist()
        raise CodecError("feature_map", f"expected a channel value range that fits float32, got an "
                                        f"overflowing max - min in channel(s) {bad[:8]}")
    return lo, scales.astype(np.float32, copy=False)


def _quantize_with(x: np.ndarray, lo: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """(C, H, W) float32 -> (C, H, W) uint8 codes for given per-channel lo/scale."""
    levels = (1 << bits) - 1
    safe = np.where(scales == 0, np.float32(1), scales).astype(np.float32)[:, None, None]
    t = np.subtract(x, lo[:, None, None], dtype=np.float32)   # (C, H, W) float32
    np.divide(t, safe, out=t)
    np.rint(t, out=t)                                         # round half to even, as torch.round
    np.clip(t, 0, levels, out=t)
    return t.astype(np.uint8)


def quantize(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, H, W) float32 -> (codes (C, H, W) uint8, offsets (C,) float32, scales (C,) float32)."""
    bits = _check_bits(bits, "bits")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise CodecError("feature_map", f"expected a (C, H, W) array, got shape {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] == 0:
        raise CodecError("feature_map", f"expected non-empty channels, got shape {x.shape}")
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    _check_finite(lo, hi)
    offsets, scales = _channel_params(lo, hi, bits)
    return _quantize_with(x, offsets, scales, bits), offsets, scales


def dequantize(codes: np.ndarray, offsets: np.ndarray, scales: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:
    """(C, H, W) uint8 codes -> (C, H, W) float32 values lo + code * scale (into `out` if given)."""
    codes = np.asarray(codes)
    s = np.asarray(scales, dtype=np.float32)[:, None, None]
    o = np.asarray(offsets, dtype=np.float32)[:, None, None]
    if out is None:
        out = np.empty(codes.shape, dtype=np.float32)
    np.multiply(codes, s, out=out, dtype=np.float32)
    np.add(out, o, out=out)
    return out


def _check_finite(lo: np.ndarray, hi: np.ndarray) -> None:
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    if bad.any():
        chans = np.flatnonzero(bad).tolist()
        raise CodecError("feature_map", f"expected finite values, got NaN or Inf in channel(s) "
                                        f"{chans[:8]}{' ...' if len(chans) > 8 else ''}")


def _check_bits(bits: object, field_name: str) -> int:
    if (not isinstance(bits, (int, np.integer)) or isinstance(bits, bool)
            or not MIN_BITS <= int(bits) <= MAX_BITS):
        raise CodecError(field_name, f"expected bits in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return int(bits)


# --- bit packing --------------------------------------------------------------------------
# Codes are packed MSB first: code i of the stream occupies bits [i*B, (i+1)*B) counted
# from the most significant bit of byte 0. Eight codes of B bits are exactly B bytes, so
# the generic packer works on groups of 8 codes held in one uint64 and compacts them in
# three shift/mask steps (8 -> 2 -> 4 -> 8 codes per lane); B = 1, 4, 8 have direct paths.

_M8 = np.uint64(0x00FF00FF00FF00FF)
_M16 = np.uint64(0x0000FFFF0000FFFF)
_M32 = np.uint64(0x00000000FFFFFFFF)


def _groups_u64(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat uint8 codes -> (m,) native uint64 words, code 0 of each group in the top byte."""
    n = codes.size
    m = -(-n // 8)
    if n % 8:
        padded = np.zeros(m * 8, dtype=np.uint8)
        padded[:n] = codes
        codes = padded
    return codes.view(">u8").astype(np.uint64), m


def _pack_generic(codes: np.ndarray, bits: int) -> bytes:
    w, m = _groups_u64(codes)
    b = np.uint64(bits)
    # 16-bit lanes: (a << 8 | b) -> (a << B | b)
    w = (w & _M8) | ((w & ~_M8) >> np.uint64(8 - bits))
    # 32-bit lanes: two 2B-bit values at bit 16 and 0 -> one 4B-bit value
    w = (w & _M16) | ((w & ~_M16) >> np.uint64(16 - 2 * bits))
    # 64-bit word: two 4B-bit values at bit 32 and 0 -> one 8B-bit value in the low bits
    w = (w & _M32) | ((w >> np.uint64(32)) << (b * np.uint64(4)))
    out = w.astype(">u8").view(np.uint8).reshape(m, 8)[:, 8 - bits:]   # low B bytes, big-endian
    return out.tobytes()[: packed_bytes(codes.size, bits)]


def _unpack_generic(buf: np.ndarray, n: int, bits: int) -> np.ndarray:
    m = -(-n // 8)
    grid = np.zeros((m, 8), dtype=np.uint8)
    flat = grid[:, 8 - bits:]
    need = m * bits
    if buf.size == need:
        flat[...] = buf.reshape(m, bits)
    else:
        tmp = np.zeros(need, dtype=np.uint8)
        tmp[: buf.size] = buf
        flat[...] = tmp.reshape(m, bits)
    w = grid.view(">u8").astype(np.uint64).ravel()
    b = np.uint64(bits)
    mask_b = np.uint64((1 << bits) - 1)
    m4 = np.uint64((1 << (4 * bits)) - 1)
    w = (w & m4) | ((w >> (b * np.uint64(4))) << np.uint64(32))
    m2 = np.uint64(((1 << (2 * bits)) - 1) * 0x0000000100000001)
    w = (w & m2) | (((w >> (b * np.uint64(2))) & m2) << np.uint64(16))
    m1 = mask_b * np.uint64(0x0001000100010001)
    w = (w & m1) | (((w >> b) & m1) << np.uint64(8))
    return w.astype(">u8").view(np.uint8)[:n]


def _pack_1(codes: np.ndarray, bits: int) -> bytes:
    return np.packbits(codes, bitorder="big").tobytes()


def _unpack_1(buf: np.ndarray, n: int, bits: int) -> np.ndarray:
    return np.unpackbits(buf, count=n, bitorder="big")


def _pack_4(codes: np.ndarray, bits: int) -> bytes:
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    pairs = codes.reshape(-1, 2)
    return ((pairs[:, 0] << np.uint8(4)) | pairs[:, 1]).tobytes()


def _unpack_4(buf: np.ndarray, n: int, bits: int) -> np.ndarray:
    out = np.empty((buf.size, 2), dtype=np.uint8)
    np.right_shift(buf, 4, out=out[:, 0])
    np.bitwise_and(buf, 0x0F, out=out[:, 1])
    return out.reshape(-1)[:n]


def _pack_8(codes: np.ndarray, bits: int) -> bytes:
    return codes.tobytes()


def _unpack_8(buf: np.ndarray, n: int, bits: int) -> np.ndarray:
    return buf[:n]


# bits -> (packer, unpacker); any width without a direct path uses the uint64 compaction.
_PACKERS: dict[int, tuple[Callable[[np.ndarray, int], bytes],
                          Callable[[np.ndarray, int, int], np.ndarray]]] = {
    b: (_pack_generic, _unpack_generic) for b in range(MIN_BITS, MAX_BITS + 1)}
_PACKERS.update({1: (_pack_1, _unpack_1), 4: (_pack_4, _unpack_4), 8: (_pack_8, _unpack_8)})


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Flat uint8 codes (each < 2**bits) -> exactly ceil(n*bits/8) bytes, MSB first."""
    bits = _check_bits(bits, "bits")
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if codes.size and int(codes.max()) >> bits:
        raise ValueError(f"expected codes < {1 << bits} for {bits} bits, got {int(codes.max())}")
    return _PACKERS[bits][0](codes, bits)


def unpack_bits(buf: bytes | np.ndarray, n: int, bits: int) -> np.ndarray:
    """ceil(n*bits/8) bytes, MSB first -> (n,) uint8 codes."""
    bits = _check_bits(bits, "bits")
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1)
    need = packed_bytes(n, bits)
    if arr.size != need:
        raise ValueError(f"expected {need} bytes for {n} codes of {bits} bits, got {arr.size}")
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    return _PACKERS[bits][1](arr, n, bits)


# --- zstd ---------------------------------------------------------------------------------
# zstd contexts are not thread-safe and cost a few hundred microseconds to set up, so each
# thread keeps its own compressor per level and one decompressor (a cache, not config).

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def _compress(data: bytes | memoryview, cfg: CodecConfig) -> bytes:
    return _compressor(cfg.zstd_level).compress(data)


def bounded_decompress(frame: bytes, expected: int, field_name: str) -> bytes:
    """Decompress one zstd frame that must hold exactly `expected` bytes.

    Never produces or allocates more than expected + 1 output bytes: a frame declaring
    another content size is refused from its header alone; a frame without a declared
    size is decompressed into a buffer of expected + 1 bytes at most.
    """
    frame = bytes(frame)
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as e:
        raise CodecError(field_name, f"expected one zstd frame, got a corrupt or truncated "
                                     f"frame header ({len(frame)} bytes): {e}") from None
    declared = params.content_size
    if declared != zstandard.CONTENTSIZE_UNKNOWN:
        if declared != expected:
            raise CodecError(field_name, f"expected {expected} bytes after decompression, got "
                                         f"{declared} (declared in the frame header)")
        try:
            out = _decompressor().decompress(frame, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise CodecError(field_name, f"corrupt or truncated zstd frame: {e}") from None
    else:
        out = _decompress_unknown_size(frame, expected, field_name)
    if len(out) != expected:
        raise CodecError(field_name, f"expected {expected} bytes after decompression, got {len(out)}")
    return out


def _decompress_unknown_size(frame: bytes, expected: int, field_name: str) -> bytes:
    limit = expected + 1
    try:  # one pass into a buffer of at most expected + 1 bytes
        return _decompressor().decompress(frame, max_output_size=limit, allow_extra_data=False)
    except zstandard.ZstdError as e:
        first_error = e
    # Tell "too large" from "corrupt": stream at most `limit` bytes through a window no
    # larger than the output may be. A frame whose window exceeds that was made for more
    # content than the field may hold: too large, refused without allocating the window.
    window = max(1 << 20, 1 << (limit - 1).bit_length())
    declared_window = zstandard.get_frame_parameters(frame).window_size
    if declared_window > window:
        raise CodecError(field_name, f"expected {expected} bytes after decompression, got a frame "
                                     f"of undeclared size too large for that (its window is "
                                     f"{declared_window} bytes)")
    got = 0
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=window).stream_reader(
            frame, read_across_frames=False)
        buf = bytearray(limit)
        view = memoryview(buf)
        while got < limit:
            k = reader.readinto(view[got:])
            if not k:
                break
            got += k
    except zstandard.ZstdError:
        pass
    if got >= limit:
        raise CodecError(field_name, f"expected {expected} bytes after decompression, got more "
                                     f"than {expected}")
    raise CodecError(field_name, f"corrupt or truncated zstd frame ({got} of {expected} bytes "
                                 f"decoded): {first_error}")


# --- feature maps -------------------------------------------------------------------------

def packed_bytes(values, bits):
    """Bytes of `values` codes of `bits` bits, MSB-first bit-packed: ceil(values*bits/8).

    The one place this formula lives; works on ints and on numpy integer arrays alike."""
    return -(-(values * bits) // 8)


def expected_payload_bytes(encoding: Encoding, channels: int, height: int, width: int,
                           bits: int) -> int:
    n = int(channels) * int(height) * int(width)
    if encoding is Encoding.FLOAT32:
        return 4 * n
    return packed_bytes(n, int(bits))


def _check_indices(idx: np.ndarray, total: int, field_name: str) -> None:
    if idx.size and (int(idx.max()) >= total):
        raise CodecError(field_name, f"expected indices in 0..{total - 1}, got {int(idx.max())}")
    if idx.size > 1:
        d = np.diff(idx.astype(np.int64))
        if (d == 0).any():
            raise CodecError(field_name, f"expected distinct indices, got {int(idx[1:][d == 0][0])} repeated")
        if (d < 0).any():
            raise CodecError(field_name, "expected strictly ascending indices, got a descending step "
                                         f"at position {int(np.flatnonzero(d < 0)[0]) + 1}")


def encode_feature_map(fm: np.ndarray, partition: int, channel_indices: np.ndarray | None,
                       bits: int | None, cfg: CodecConfig = CodecConfig()) -> EncodedFeatureMap:
    """Encode one image's (C_total, H, W) float32 feature map at partition P.

    `channel_indices`: kept channels, strictly ascending (None = all). `bits`: 1..8 for
    quantized, None for the lossless FLOAT32 reference. Raises CodecError on NaN/Inf.
    Indices equal to 0..C-1 travel as an empty list (the proto's default).
    """
    x = np.asarray(fm)
    if x.ndim != 3 or 0 in x.shape:
        raise CodecError("feature_map", f"expected a non-empty (C, H, W) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise CodecError("feature_map", f"expected float32 values, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    total, h, w = x.shape
    flat = x.reshape(total, -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)     # (C_total,) each; NaN/Inf show up here
    _check_finite(lo, hi)

    if channel_indices is None:
        idx = np.arange(total, dtype=np.uint32)
    else:
        raw = np.asarray(channel_indices)
        if raw.ndim != 1 or raw.size == 0 or not np.issubdtype(raw.dtype, np.integer):
            raise CodecError("feature_map.channel_indices",
                             f"expected a non-empty 1-D integer array, got {raw.dtype} shape {raw.shape}")
        if (raw < 0).any():
            raise CodecError("feature_map.channel_indices", f"expected indices >= 0, got {int(raw.min())}")
        idx = raw.astype(np.uint32)
        _check_indices(idx, total, "feature_map.channel_indices")
    c = idx.size
    all_prefix = int(idx[-1]) == c - 1           # ascending + distinct: 0..C-1 exactly
    if all_prefix:
        kept, klo, khi = (x if c == total else x[:c]), lo[:c], hi[:c]
        wire_idx = _EMPTY_U32
    else:
        kept, klo, khi = x[idx], lo[idx], hi[idx]
        wire_idx = idx

    if bits is None:
        payload = _compress(np.ascontiguousarray(kept, dtype="<f4").data, cfg)
        return EncodedFeatureMap(int(partition), c, h, w, Encoding.FLOAT32, 0,
                                 wire_idx, _EMPTY_F32, _EMPTY_F32, payload)
    bits = _check_bits(bits, "feature_map.bits")
    offsets, scales = _channel_params(klo, khi, bits)
    codes = _quantize_with(kept, offsets, scales, bits)
    payload = _compress(_PACKERS[bits][0](codes.reshape(-1), bits), cfg)
    return EncodedFeatureMap(int(partition), c, h, w, Encoding.QUANTIZED, bits,
                             wire_idx, offsets, scales, payload)


def _validate(enc: EncodedFeatureMap, total: int, height: int, width: int,
              max_channels_kept: int | None, artifact_indices: np.ndarray | None) -> np.ndarray:
    """Check `enc` against the partition's (total, height, width); return the kept indices."""
    if not isinstance(enc.encoding, Encoding):
        raise CodecError("feature_map.encoding", "expected ENCODING_QUANTIZED or ENCODING_FLOAT32, "
                                                 f"got {enc.encoding!r}")
    if enc.encoding is Encoding.QUANTIZED:
        _check_bits(enc.bits, "feature_map.bits")
    elif enc.bits != 0:
        raise CodecError("feature_map.bits", f"expected 0 for ENCODING_FLOAT32, got {enc.bits}")
    limit = total if max_channels_kept is None else min(total, max_channels_kept)
    if not 1 <= enc.channels <= limit:
        raise CodecError("feature_map.channels", f"expected 1..{limit} kept channels, got {enc.channels}")
    if enc.height != height:
        raise CodecError("feature_map.height", f"expected {height} (the partition's), got {enc.height}")
    if enc.width != width:
        raise CodecError("feature_map.width", f"expected {width} (the partition's), got {enc.width}")
    idx = np.asarray(enc.channel_indices)
    if idx.size == 0:
        if artifact_indices is not None:
            idx = np.asarray(artifact_indices, dtype=np.int64)
            if idx.ndim != 1 or idx.size != enc.channels:
                raise CodecError("feature_map.channel_indices",
                                 f"expected the artifact's {idx.size} channels to match "
                                 f"channels={enc.channels}")
            _check_indices(idx, total, "feature_map.channel_indices")
            return idx
        return np.arange(enc.channels)
    if idx.ndim != 1 or idx.size != enc.channels:
        raise CodecError("feature_map.channel_indices",
                         f"expected {enc.channels} indices (one per kept channel) or none, got {idx.size}")
    if not np.issubdtype(idx.dtype, np.integer) or (idx < 0).any():
        raise CodecError("feature_map.channel_indices", f"expected non-negative integers, got {idx.dtype}")
    _check_indices(idx, total, "feature_map.channel_indices")
    return idx.astype(np.int64)


def _validate_side(values: np.ndarray, c: int, name: str, nonneg: bool) -> np.ndarray:
    v = np.asarray(values)
    if v.ndim != 1 or v.size != c:
        raise CodecError(f"feature_map.{name}", f"expected {c} values (one per kept channel), got {v.size}")
    v = v.astype(np.float32, copy=False)
    if not np.isfinite(v).all():
        raise CodecError(f"feature_map.{name}", f"expected finite values, got NaN or Inf at "
                                                f"{np.flatnonzero(~np.isfinite(v)).tolist()[:8]}")
    if nonneg and (v < 0).any():
        raise CodecError(f"feature_map.{name}", f"expected values >= 0, got {float(v.min())}")
    return v


def _check_range(offsets: np.ndarray, scales: np.ndarray, bits: int) -> None:
    """The largest dequantized value, offset + (2**B - 1) * scale, must be finite in float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        top = offsets + np.float32((1 << bits) - 1) * scales      # (C,) float32
    bad = np.flatnonzero(~np.isfinite(top))
    if bad.size:
        raise CodecError("feature_map.scales",
                         f"expected offset + {(1 << bits) - 1} * scale finite in float32, got an "
                         f"overflowing range in channel(s) {bad.tolist()[:8]}")


def decode_feature_map(enc: EncodedFeatureMap, total_channels: int, height: int, width: int,
                       max_channels_kept: int | None = None, *,
                       artifact_indices: np.ndarray | None = None) -> np.ndarray:
    """Decode to the partition's (total_channels, H, W) float32 map; dropped channels are 0.

    `max_channels_kept` caps C (e.g. a scheme's C). `artifact_indices`: the kept channels
    of a fine-tuned artifact, used when the message carries no indices (else 0..C-1).
    Every inconsistency raises CodecError naming the proto field.
    """
    idx = _validate(enc, total_channels, height, width, max_channels_kept, artifact_indices)
    c = enc.channels
    quantized = enc.encoding is Encoding.QUANTIZED
    if quantized:
        offsets = _validate_side(enc.offsets, c, "offsets", nonneg=False)
        scales = _validate_side(enc.scales, c, "scales", nonneg=True)
        _check_range(offsets, scales, enc.bits)
    else:
        for name in ("offsets", "scales"):
            if len(getattr(enc, name)):
                raise CodecError(f"feature_map.{name}", f"expected none for ENCODING_FLOAT32, "
                                                        f"got {len(getattr(enc, name))}")
    expected = expected_payload_bytes(enc.encoding, c, height, width, enc.bits)
    raw = np.frombuffer(bounded_decompress(enc.payload, expected, "feature_map.payload"), dtype=np.uint8)

    out = np.zeros((total_channels, height, width), dtype=np.float32)
    contiguous = idx[-1] == c - 1                    # kept channels are 0..C-1
    if quantized:
        codes = _PACKERS[enc.bits][1](raw, c * height * width, enc.bits).reshape(c, height, width)
        if contiguous:
            dequantize(codes, offsets, scales, out=out[:c])
        else:
            out[idx] = dequantize(codes, offsets, scales)
    else:
        values = raw.view("<f4").reshape(c, height, width)
        if contiguous:
            out[:c] = values
        else:
            out[idx] = values
    return out


# --- protobuf -----------------------------------------------------------------------------

def feature_map_to_proto(enc: EncodedFeatureMap) -> coinfer_pb2.FeatureMap:
    msg = coinfer_pb2.FeatureMap(
        partition=enc.partition, channels=enc.channels, height=enc.height, width=enc.width,
        encoding=enc.encoding.value, bits=enc.bits, payload=enc.payload)
    msg.channel_indices.extend(np.asarray(enc.channel_indices).tolist())
    msg.offsets.extend(np.asarray(enc.offsets, dtype=np.float32).tolist())
    msg.scales.extend(np.asarray(enc.scales, dtype=np.float32).tolist())
    return msg


def feature_map_from_proto(msg: coinfer_pb2.FeatureMap) -> EncodedFeatureMap:
    """Message -> EncodedFeatureMap; checks the encoding and the side-data lengths."""
    if not isinstance(msg, coinfer_pb2.FeatureMap):
        raise CodecError("feature_map", f"expected a coinfer.v1.FeatureMap, got {type(msg).__name__}")
    try:
        encoding = Encoding(msg.encoding)
    except ValueError:
        name = (coinfer_pb2.Encoding.Name(msg.encoding)
                if msg.encoding in coinfer_pb2.Encoding.values() else str(msg.encoding))
        raise CodecError("feature_map.encoding", "expected ENCODING_QUANTIZED or ENCODING_FLOAT32, "
                                                 f"got {name}") from None
    c = msg.channels
    n_idx = len(msg.channel_indices)
    if n_idx not in (0, c):
        raise CodecError("feature_map.channel_indices",
                         f"expected {c} indices (one per kept channel) or none, got {n_idx}")
    side = c if encoding is Encoding.QUANTIZED else 0
    for name in ("offsets", "scales"):
        k = len(getattr(msg, name))
        if k != side:
            raise CodecError(f"feature_map.{name}", f"expected {side} values for "
                                                    f"{encoding.name} with {c} channels, got {k}")
    return EncodedFeatureMap(
        partition=msg.partition, channels=c, height=msg.height, width=msg.width,
        encoding=encoding, bits=msg.bits,
        channel_indices=np.array(msg.channel_indices, dtype=np.uint32),
        offsets=np.array(msg.offsets, dtype=np.float32),
        scales=np.array(msg.scales, dtype=np.float32),
        payload=msg.payload)


# --- images (cloud-only) ------------------------------------------------------------------

def encode_image(img: np.ndarray, cfg: CodecConfig = CodecConfig()) -> coinfer_pb2.Image:
    """(C, H, W) uint8 image -> coinfer.v1.Image with one lossless zstd frame."""
    a = np.asarray(img)
    if a.ndim != 3 or a.dtype != np.uint8 or 0 in a.shape:
        raise CodecError("image", f"expected a non-empty (C, H, W) uint8 array, got {a.dtype} {a.shape}")
    c, h, w = a.shape
    return coinfer_pb2.Image(channels=c, height=h, width=w,
                             payload=_compress(np.ascontiguousarray(a).data, cfg))


def decode_image(msg: coinfer_pb2.Image, expected_shape: tuple[int, int, int]) -> np.ndarray:
    """coinfer.v1.Image -> (C, H, W) uint8, checked against the model's input shape."""
    for name, want in zip(("channels", "height", "width"), expected_shape):
        got = getattr(msg, name)
        if got != want:
            raise CodecError(f"image.{name}", f"expected {want} (the model's input), got {got}")
    c, h, w = (int(v) for v in expected_shape)
    raw = bounded_decompress(msg.payload, c * h * w, "image.payload")
    return np.frombuffer(raw, dtype=np.uint8).reshape(c, h, w).copy()
