"""Property and malformation tests for the feature-map codec (device/codec.py)."""
from __future__ import annotations

import dataclasses
import pickle
import tracemalloc

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec
from common.codec import CodecConfig, CodecError, Encoding, EncodedFeatureMap
from protos.coinfer.v1 import coinfer_pb2

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ------------------------------------------------------------------------------

def reference_pack(codes: np.ndarray, bits: int) -> bytes:
    """Slow, obviously-correct MSB-first packer: one character per bit."""
    s = "".join(format(int(v), f"0{bits}b") for v in codes)
    s += "0" * (-len(s) % 8)
    return bytes(int(s[i:i + 8], 2) for i in range(0, len(s), 8))


def torch_fake_quant(x: np.ndarray, bits: int) -> np.ndarray:
    """The trainer's straight-through fake-quantizer formula, written in torch float32."""
    t = torch.from_numpy(x)
    lo = t.amin(dim=(1, 2), keepdim=True)
    hi = t.amax(dim=(1, 2), keepdim=True)
    levels = float(2 ** bits - 1)
    scale = (hi - lo) / levels
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    code = torch.clamp(torch.round((t - lo) / safe), 0, levels)
    return (lo + code * scale).numpy()


@st.composite
def feature_maps(draw, max_c: int = 8, max_hw: int = 7):
    """(fm (C_total, H, W) float32, kept indices or None, bits 1..8)."""
    c = draw(st.integers(1, max_c))
    h = draw(st.integers(1, max_hw))
    w = draw(st.integers(1, max_hw))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0, 1e4]))
    fm = (rng.standard_normal((c, h, w)) * scale + rng.normal(0, scale, (c, 1, 1))).astype(np.float32)
    if draw(st.booleans()):
        fm = np.maximum(fm, 0)                      # post-ReLU maps: many exact zeros
    n_const = draw(st.integers(0, c))
    for i in rng.choice(c, n_const, replace=False):
        fm[i] = np.float32(rng.normal(0, scale))   # constant channels
    subset = draw(st.one_of(st.none(), st.lists(st.integers(0, c - 1), min_size=1, unique=True)))
    idx = None if subset is None else np.array(sorted(subset), dtype=np.int64)
    return fm, idx, draw(st.integers(1, 8))


def decompressed(enc: EncodedFeatureMap) -> bytes:
    return zstandard.ZstdDecompressor().decompress(enc.payload)


def good_encoding(bits: int | None = 4) -> tuple[EncodedFeatureMap, np.ndarray]:
    rng = np.random.default_rng(1)
    fm = np.maximum(rng.standard_normal((6, 7, 7)), 0).astype(np.float32)   # 392 values
    return codec.encode_feature_map(fm, 1, np.array([0, 2, 3, 5]), bits), fm


# --- bit packing --------------------------------------------------------------------------

@PROPS
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_bits_matches_reference_and_size(bits, data):
    codes = np.array(data.draw(st.lists(st.integers(0, 2 ** bits - 1), max_size=80)), dtype=np.uint8)
    packed = codec.pack_bits(codes, bits)
    assert len(packed) == -(-codes.size * bits // 8)
    assert packed == reference_pack(codes, bits)
    assert np.array_equal(codec.unpack_bits(packed, codes.size, bits), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_generic_packer_agrees_with_fast_paths(bits):
    codes = np.random.default_rng(bits).integers(0, 2 ** bits, 1003).astype(np.uint8)
    ref = reference_pack(codes, bits)
    assert codec._pack_generic(codes, bits) == ref
    assert np.array_equal(codec._unpack_generic(np.frombuffer(ref, np.uint8), codes.size, bits), codes)


def test_pack_bits_rejects_codes_too_wide_and_wrong_length():
    with pytest.raises(ValueError, match="codes < 8"):
        codec.pack_bits(np.array([8], dtype=np.uint8), 3)
    with pytest.raises(ValueError, match="expected 2 bytes"):
        codec.unpack_bits(b"\x00", 5, 3)


# --- quantization properties --------------------------------------------------------------

@PROPS
@given(feature_maps())
def test_packed_size_is_exact(case):
    fm, idx, bits = case
    enc = codec.encode_feature_map(fm, 0, idx, bits)
    c = fm.shape[0] if idx is None else idx.size
    want = -(-c * fm.shape[1] * fm.shape[2] * bits // 8)
    assert enc.channels == c and enc.packed_bytes == want
    assert len(decompressed(enc)) == want
    assert enc.wire_bytes == codec.feature_map_to_proto(enc).ByteSize()


@PROPS
@given(feature_maps())
def test_round_trip_within_half_a_step_and_dropped_channels_zero(case):
    fm, idx, bits = case
    enc = codec.encode_feature_map(fm, 0, idx, bits)
    out = codec.decode_feature_map(enc, *fm.shape)
    kept = np.arange(fm.shape[0]) if idx is None else idx
    dropped = np.setdiff1d(np.arange(fm.shape[0]), kept)
    assert out.shape == fm.shape and out.dtype == np.float32
    assert not out[dropped].any()
    x = fm[kept].astype(np.float64)
    lo, hi = x.min(axis=(1, 2)), x.max(axis=(1, 2))
    step = (hi - lo) / (2 ** bits - 1)
    slack = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(lo), np.abs(hi)) + 1e-30
    err = np.abs(out[kept] - x).max(axis=(1, 2))
    assert (err <= step / 2 + slack).all(), (err, step)
    np.testing.assert_array_equal(enc.offsets, fm[kept].min(axis=(1, 2)))


@PROPS
@given(feature_maps())
def test_quantizer_matches_torch_fake_quantizer_exactly(case):
    fm, _, bits = case
    codes, offsets, scales = codec.quantize(fm, bits)
    assert codes.dtype == np.uint8 and codes.shape == fm.shape and int(codes.max()) < 2 ** bits
    np.testing.assert_array_equal(codec.dequantize(codes, offsets, scales), torch_fake_quant(fm, bits))


def test_constant_channels_are_exact_with_zero_scale():
    fm = np.zeros((4, 5, 5), dtype=np.float32)
    fm[1] = 3.25
    fm[2] = -1e-7
    fm[3] = np.arange(25, dtype=np.float32).reshape(5, 5)
    for bits in range(1, 9):
        enc = codec.encode_feature_map(fm, 0, None, bits)
        out = codec.decode_feature_map(enc, 4, 5, 5)
        np.testing.assert_array_equal(out[:3], fm[:3])
        np.testing.assert_array_equal(enc.scales[:3], 0)
        assert enc.scales[3] > 0


def test_selected_channels_travel_and_prefix_travels_as_empty_indices():
    fm = np.random.default_rng(0).standard_normal((5, 3, 3)).astype(np.float32)
    enc = codec.encode_feature_map(fm, 0, np.array([1, 4]), 8)
    assert enc.channel_indices.tolist() == [1, 4]
    out = codec.decode_feature_map(enc, 5, 3, 3)
    assert not out[[0, 2, 3]].any() and out[[1, 4]].all()
    prefix = codec.encode_feature_map(fm, 0, np.array([0, 1, 2]), 8)
    assert prefix.channel_indices.size == 0 and prefix.channels == 3
    assert codec.decode_feature_map(prefix, 5, 3, 3)[:3].any()


def test_artifact_indices_used_when_message_has_none():
    fm = np.random.default_rng(0).standard_normal((5, 3, 3)).astype(np.float32)
    enc = dataclasses.replace(codec.encode_feature_map(fm, 0, np.array([1, 4]), 8),
                              channel_indices=np.zeros(0, np.uint32))
    out = codec.decode_feature_map(enc, 5, 3, 3, artifact_indices=np.array([1, 4]))
    assert out[[1, 4]].any() and not out[[0, 2, 3]].any()
    with pytest.raises(CodecError) as e:
        codec.decode_feature_map(enc, 5, 3, 3, artifact_indices=np.array([1, 2, 4]))
    assert e.value.field == "feature_map.channel_indices"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("bits", [None, 1, 4, 8])
@pytest.mark.parametrize("channel", [0, 3])     # 3 is dropped by the selection below
def test_non_finite_values_rejected(bad, bits, channel):
    fm = np.ones((4, 3, 3), dtype=np.float32)
    fm[channel, 1, 2] = bad
    with pytest.raises(CodecError, match="NaN or Inf") as e:
        codec.encode_feature_map(fm, 0, np.array([0, 1]), bits)
    assert e.value.field == "feature_map"
    with pytest.raises(CodecError, match="NaN or Inf"):
        codec.quantize(fm, 4)


@pytest.mark.parametrize("idx, bits, field", [
    (np.array([0, 0]), 4, "feature_map.channel_indices"),
    (np.array([2, 1]), 4, "feature_map.channel_indices"),
    (np.array([0, 4]), 4, "feature_map.channel_indices"),
    (np.array([-1, 2]), 4, "feature_map.channel_indices"),
    (np.array([], dtype=np.int64), 4, "feature_map.channel_indices"),
    (None, 0, "feature_map.bits"),
    (None, 9, "feature_map.bits"),
])
def test_encode_rejects_bad_arguments(idx, bits, field):
    fm = np.ones((4, 2, 2), dtype=np.float32)
    with pytest.raises(CodecError) as e:
        codec.encode_feature_map(fm, 0, idx, bits)
    assert e.value.field == field


def test_lossless_float32_round_trip_is_bit_exact():
    rng = np.random.default_rng(3)
    fm = rng.standard_normal((6, 4, 5)).astype(np.float32) * 1e3
    fm[0, 0, :3] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max]
    for idx in (None, np.array([0, 3, 5])):
        enc = codec.encode_feature_map(fm, 2, idx, None)
        assert enc.encoding is Encoding.FLOAT32 and enc.bits == 0 and enc.offsets.size == 0
        out = codec.decode_feature_map(enc, 6, 4, 5)
        kept = np.arange(6) if idx is None else idx
        assert np.array_equal(out[kept].view(np.uint32), fm[kept].view(np.uint32))
        assert len(decompressed(enc)) == enc.packed_bytes == kept.size * 4 * 5 * 4


def test_zstd_level_is_configurable_and_validated():
    fm = np.maximum(np.random.default_rng(0).standard_normal((8, 16, 16)), 0).astype(np.float32)
    fast = codec.encode_feature_map(fm, 0, None, 8, CodecConfig(zstd_level=1))
    small = codec.encode_feature_map(fm, 0, None, 8, CodecConfig(zstd_level=19))
    assert len(small.payload) < len(fast.payload)
    np.testing.assert_array_equal(codec.decode_feature_map(small, 8, 16, 16),
                                  codec.decode_feature_map(fast, 8, 16, 16))
    with pytest.raises(ValueError, match="zstd_level"):
        CodecConfig(zstd_level=99)


# --- decode malformations -----------------------------------------------------------------

def _recompress(enc: EncodedFeatureMap, raw: bytes) -> EncodedFeatureMap:
    return dataclasses.replace(enc, payload=zstandard.ZstdCompressor().compress(raw))


def _no_content_size(raw: bytes) -> bytes:
    """One zstd frame of `raw` whose header declares no content size (streaming style)."""
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = cobj.compress(raw) + cobj.flush()
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    return frame


MALFORMED = {
    # name: (mutation of a good 4-channel 4-bit map of a (6, 7, 7) partition, field, message part)
    "encoding-not-enum": (lambda e: dataclasses.replace(e, encoding=0), "feature_map.encoding", "expected"),
    "bits-0": (lambda e: dataclasses.replace(e, bits=0), "feature_map.bits", "1..8"),
    "bits-9": (lambda e: dataclasses.replace(e, bits=9), "feature_map.bits", "got 9"),
    "channels-0": (lambda e: dataclasses.replace(e, channels=0), "feature_map.channels", "got 0"),
    "channels-too-many": (lambda e: dataclasses.replace(e, channels=7), "feature_map.channels", "got 7"),
    "height": (lambda e: dataclasses.replace(e, height=8), "feature_map.height", "expected 7"),
    "width": (lambda e: dataclasses.replace(e, width=6), "feature_map.width", "expected 7"),
    "indices-out-of-range": (lambda e: dataclasses.replace(e, channel_indices=np.array([0, 2, 3, 6], np.uint32)),
                             "feature_map.channel_indices", "0..5"),
    "indices-repeated": (lambda e: dataclasses.replace(e, channel_indices=np.array([0, 2, 2, 5], np.uint32)),
                         "feature_map.channel_indices", "distinct"),
    "indices-descending": (lambda e: dataclasses.replace(e, channel_indices=np.array([0, 3, 2, 5], np.uint32)),
                           "feature_map.channel_indices", "ascending"),
    "indices-length": (lambda e: dataclasses.replace(e, channel_indices=np.array([0, 2, 3], np.uint32)),
                       "feature_map.channel_indices", "got 3"),
    "offsets-length": (lambda e: dataclasses.replace(e, offsets=e.offsets[:3]), "feature_map.offsets", "got 3"),
    "offsets-nan": (lambda e: dataclasses.replace(e, offsets=np.array([0, np.nan, 0, 0], np.float32)),
                    "feature_map.offsets", "NaN or Inf"),
    "offsets-inf": (lambda e: dataclasses.replace(e, offsets=np.array([0, 0, -np.inf, 0], np.float32)),
                    "feature_map.offsets", "NaN or Inf"),
    "scales-length": (lambda e: dataclasses.replace(e, scales=np.ones(5, np.float32)), "feature_map.scales", "got 5"),
    "scales-inf": (lambda e: dataclasses.replace(e, scales=np.array([1, np.inf, 1, 1], np.float32)),
                   "feature_map.scales", "NaN or Inf"),
    "scales-negative": (lambda e: dataclasses.replace(e, scales=np.array([1, -0.5, 1, 1], np.float32)),
                        "feature_map.scales", ">= 0"),
    "payload-empty": (lambda e: dataclasses.replace(e, payload=b""), "feature_map.payload", "zstd"),
    "payload-garbage": (lambda e: dataclasses.replace(e, payload=b"\x00" * 40), "feature_map.payload", "zstd"),
    "payload-truncated": (lambda e: dataclasses.replace(e, payload=e.payload[:-5]), "feature_map.payload", "truncated"),
    "payload-corrupt": (lambda e: dataclasses.replace(
        e, payload=e.payload[:12] + bytes(b ^ 0x5A for b in e.payload[12:])), "feature_map.payload", "zstd"),
    "payload-trailing-data": (lambda e: dataclasses.replace(e, payload=e.payload + b"junk"),
                              "feature_map.payload", "zstd"),
    "payload-one-short": (lambda e: _recompress(e, decompressed(e)[:-1]), "feature_map.payload",
                          "expected 98 bytes after decompression, got 97"),
    "payload-one-long": (lambda e: _recompress(e, decompressed(e) + b"\x00"), "feature_map.payload",
                         "expected 98 bytes after decompression, got 99"),
    "payload-short-no-size": (lambda e: dataclasses.replace(e, payload=_no_content_size(decompressed(e)[:-1])),
                              "feature_map.payload", "expected 98 bytes after decompression, got 97"),
    "payload-long-no-size": (lambda e: dataclasses.replace(e, payload=_no_content_size(decompressed(e) + b"\x01")),
                             "feature_map.payload", "expected 98 bytes after decompression, got 99"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_decode_rejects_malformed_fields(name):
    enc, _ = good_encoding(4)
    assert enc.packed_bytes == 98                         # 4 channels x 7 x 7 x 4 bits
    codec.decode_feature_map(enc, 6, 7, 7)               # the unmodified message decodes
    mutate, field, part = MALFORMED[name]
    with pytest.raises(CodecError) as e:
        codec.decode_feature_map(mutate(enc), 6, 7, 7)
    assert e.value.field == field
    assert str(e.value).startswith(field + ": ") and part in str(e.value), str(e.value)


def test_decode_float32_rejects_side_data_and_bits():
    enc, _ = good_encoding(None)
    codec.decode_feature_map(enc, 6, 7, 7)
    with pytest.raises(CodecError) as e:
        codec.decode_feature_map(dataclasses.replace(enc, bits=4), 6, 7, 7)
    assert e.value.field == "feature_map.bits"
    with pytest.raises(CodecError) as e:
        codec.decode_feature_map(dataclasses.replace(enc, scales=np.ones(4, np.float32)), 6, 7, 7)
    assert e.value.field == "feature_map.scales"


def test_decode_respects_max_channels_kept():
    enc, _ = good_encoding(4)
    codec.decode_feature_map(enc, 6, 7, 7, max_channels_kept=4)
    with pytest.raises(CodecError) as e:
        codec.decode_feature_map(enc, 6, 7, 7, max_channels_kept=3)
    assert e.value.field == "feature_map.channels"


def test_codec_error_pickles_with_its_field():
    err = pickle.loads(pickle.dumps(CodecError("feature_map.bits", "expected 1..8, got 9")))
    assert err.field == "feature_map.bits" and str(err) == "feature_map.bits: expected 1..8, got 9"


# --- decompression bombs ------------------------------------------------------------------

def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_frame_declaring_2gb_is_rejected_from_its_header():
    cobj = zstandard.ZstdCompressor(level=1).compressobj(size=2 * 2 ** 30)
    frame = cobj.compress(b"\x00" * 4096) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert zstandard.get_frame_parameters(frame).content_size == 2 * 2 ** 30
    enc = dataclasses.replace(good_encoding(4)[0], payload=frame)

    def decode():
        with pytest.raises(CodecError, match="expected 98 bytes after decompression, got 2147483648"):
            codec.decode_feature_map(enc, 6, 7, 7)
    assert _peak_bytes(decode) < 1 << 20


def test_frame_without_size_expanding_hugely_is_bounded():
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    chunk = b"\x00" * (1 << 20)
    frame = b"".join(cobj.compress(chunk) for _ in range(256)) + cobj.flush()   # 256 MiB of zeros
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert len(frame) < 64 * 1024
    enc = dataclasses.replace(good_encoding(4)[0], payload=frame)

    def decode():
        with pytest.raises(CodecError, match="got more than 98") as e:
            codec.decode_feature_map(enc, 6, 7, 7)
        assert e.value.field == "feature_map.payload"
    assert _peak_bytes(decode) < 4 << 20
    img = coinfer_pb2.Image(channels=1, height=28, width=28, payload=frame)
    with pytest.raises(CodecError, match="got more than 784"):
        codec.decode_image(img, (1, 28, 28))


# --- protobuf -----------------------------------------------------------------------------

@PROPS
@given(feature_maps(), st.booleans())
def test_proto_round_trip(case, lossless):
    fm, idx, bits = case
    enc = codec.encode_feature_map(fm, 3, idx, None if lossless else bits)
    wire = codec.feature_map_to_proto(enc).SerializeToString()
    assert len(wire) == enc.wire_bytes
    back = codec.feature_map_from_proto(coinfer_pb2.FeatureMap.FromString(wire))
    for f in ("partition", "channels", "height", "width", "encoding", "bits", "payload"):
        assert getattr(back, f) == getattr(enc, f), f
    for f in ("channel_indices", "offsets", "scales"):
        np.testing.assert_array_equal(getattr(back, f), getattr(enc, f))
    np.testing.assert_array_equal(codec.decode_feature_map(back, *fm.shape),
                                  codec.decode_feature_map(enc, *fm.shape))


@pytest.mark.parametrize("edit, field", [
    (lambda m: setattr(m, "encoding", coinfer_pb2.ENCODING_UNSPECIFIED), "feature_map.encoding"),
    (lambda m: setattr(m, "encoding", 7), "feature_map.encoding"),
    (lambda m: m.offsets.pop(), "feature_map.offsets"),
    (lambda m: m.scales.append(1.0), "feature_map.scales"),
    (lambda m: m.channel_indices.pop(), "feature_map.channel_indices"),
])
def test_from_proto_rejects_inconsistent_messages(edit, field):
    msg = codec.feature_map_to_proto(good_encoding(4)[0])
    codec.feature_map_from_proto(msg)
    edit(msg)
    with pytest.raises(CodecError) as e:
        codec.feature_map_from_proto(msg)
    assert e.value.field == field


# --- images -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 224, 224), (3, 5, 7)])
def test_image_round_trip_is_exact(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    msg = codec.encode_image(img, CodecConfig())
    assert (msg.channels, msg.height, msg.width) == shape
    out = codec.decode_image(coinfer_pb2.Image.FromString(msg.SerializeToString()), shape)
    assert out.dtype == np.uint8 and np.array_equal(out, img)


@pytest.mark.parametrize("edit, field, part", [
    (lambda m: setattr(m, "channels", 3), "image.channels", "expected 1"),
    (lambda m: setattr(m, "height", 27), "image.height", "expected 28"),
    (lambda m: setattr(m, "width", 0), "image.width", "expected 28"),
    (lambda m: setattr(m, "payload", m.payload[:-4]), "image.payload", "truncated"),
    (lambda m: setattr(m, "payload", zstandard.ZstdCompressor().compress(b"\x00" * 783)),
     "image.payload", "expected 784 bytes after decompression, got 783"),
])
def test_decode_image_rejects_malformed(edit, field, part):
    msg = codec.encode_image(np.full((1, 28, 28), 7, np.uint8))
    edit(msg)
    with pytest.raises(CodecError) as e:
        codec.decode_image(msg, (1, 28, 28))
    assert e.value.field == field and part in str(e.value), str(e.value)


def test_encode_image_rejects_non_uint8():
    with pytest.raises(CodecError):
        codec.encode_image(np.zeros((1, 4, 4), np.float32))


def test_wire_bytes_counts_multi_byte_varints():
    idx = np.array([1, 200, 20_000, 3_000_000, 2 ** 31], dtype=np.uint32)
    enc = EncodedFeatureMap(1, 5, 2, 2, Encoding.QUANTIZED, 3, idx, np.zeros(5, np.float32),
                            np.ones(5, np.float32), b"x" * 300)
    assert enc.wire_bytes == codec.feature_map_to_proto(enc).ByteSize()
