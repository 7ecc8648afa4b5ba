"""Profile reader/writer and the latency model (SI units)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from planner.latency import BytesModel, LatencyModel, LatencyModelError, LinkModel
from planner.profile import (CodecProfile, DeviceCpu, ProfileError, load_profile, profile_to_dict, save_profile)
from planner.scheme import CLOUD_ONLY, DEVICE_ONLY, Scheme
from tests.planner_fixtures import SEED_PROFILE, seed_path, tiny_profile


def test_seed_profile_reads_as_documented():
    p = load_profile(seed_path(SEED_PROFILE))
    assert (p.model, p.dataset, p.base_top1_error) == ("vgg16_bn", "stanford_cars", 0.151)
    assert len(p.partitions) == 13 and p.partitions[12].height == 7
    assert p.device_full_model_s == 3.2571 and p.cloud_only_upload_bytes == 259200
    assert p.rtt_s is None and p.codec == ()


def test_seed_latency_in_si_units():
    p = load_profile(seed_path(SEED_PROFILE))
    m = LatencyModel.from_profile(p, 0.5)
    # 0:1:5 = 0.1179 + 0.003 + 1*5*224*224/8 bytes * 8 / 0.5e6
    assert m.latency_s(Scheme.parse("0:1:5")) == pytest.approx(0.1209 + 31360 * 8 / 0.5e6)
    assert m.latency_s(Scheme.parse("0:1:5")) == pytest.approx(0.62266)
    assert m.latency_s(Scheme.parse("2:1:4")) == pytest.approx(0.671152)
    assert m.latency_s(DEVICE_ONLY) == 3.2571
    assert m.latency_s(CLOUD_ONLY) == pytest.approx(259200 * 8 / 0.5e6 + 0.0032)
    assert m.best_single_end() == (DEVICE_ONLY, 3.2571)
    assert LatencyModel.from_profile(p, 2).best_single_end()[0] == CLOUD_ONLY


def test_bytes_rtt_codec_and_side_data():
    codec = (CodecProfile(1, 4, zstd_ratio=0.5, encode_s=0.002, decode_s=0.001),)
    p = tiny_profile(rtt_s=0.02, codec=codec, side_bytes_per_channel=8, header_bytes=16)
    m = LatencyModel.from_profile(p, 1.0)
    s = Scheme.parse("1:3:4")     # packed 3*5*5*4/8 = 37.5 -> 38 bytes, zstd 0.5 -> 19
    assert m.wire_bytes(s) == 19 + 3 * 8 + 16
    b = m.breakdown(s)
    assert b.device_s == pytest.approx(0.302) and b.cloud_s == pytest.approx(0.006)
    assert b.transfer_s == pytest.approx(59 * 8 / 1e6 + 0.02)
    assert m.latency_s(CLOUD_ONLY) == pytest.approx(1000 * 8 / 1e6 + 0.02 + 0.02)
    assert m.latency_s(DEVICE_ONLY) == 1.0   # no network, no RTT
    plain = LatencyModel.from_profile(p, 1.0, rtt_s=0.0, bytes_model=BytesModel(False, False))
    assert plain.wire_bytes(s) == 38
    assert plain.latency_s(Scheme.parse("0:1:1")) == pytest.approx(0.11 + math.ceil(100 / 8) * 8 / 1e6)


def test_vectorised_latency_matches_scalar_exactly():
    codec = (CodecProfile(0, 3, zstd_ratio=0.7, encode_s=0.001),)
    m = LatencyModel.from_profile(tiny_profile(codec=codec, side_bytes_per_channel=4), 0.7, rtt_s=0.01)
    rows = [(p, c, b) for p in range(2) for c in (1, 3, 8) for b in range(1, 9)]
    vec = m.split_latencies(*np.array(rows).T)
    assert list(vec) == [m.latency_s(Scheme.split(*r)) for r in rows]


def test_codec_seconds_per_value_price_every_channel_count():
    """A live profile's encode/decode seconds per value sent scale with C*H*W and win over
    the codec table (which holds what one C at (P, B) happened to cost)."""
    import dataclasses
    codec = (CodecProfile(1, 4, zstd_ratio=0.5, encode_s=0.002, decode_s=0.001),)
    p = dataclasses.replace(tiny_profile(codec=codec), encode_s_per_value=1e-5, decode_s_per_value=2e-6)
    m = LatencyModel.from_profile(p, 1.0)
    b1, b3 = m.breakdown(Scheme.parse("1:1:4")), m.breakdown(Scheme.parse("1:3:4"))
    assert b1.device_s == pytest.approx(0.3 + 25 * 1e-5) and b3.device_s == pytest.approx(0.3 + 75 * 1e-5)
    assert b3.cloud_s == pytest.approx(0.005 + 75 * 2e-6)
    rows = [(q, c, bits) for q in range(2) for c in (1, 3, 8) for bits in (1, 4, 8)]
    assert list(m.split_latencies(*np.array(rows).T)) == [m.latency_s(Scheme.split(*r)) for r in rows]


def test_latency_model_refuses_bad_input():
    with pytest.raises(LatencyModelError, match="bandwidth_mbps > 0"):
        LinkModel(0.0)
    m = LatencyModel.from_profile(tiny_profile(), 1.0)
    with pytest.raises(LatencyModelError, match="C <= 8"):
        m.latency_s(Scheme.parse("0:9:1"))
    with pytest.raises(ProfileError, match="partition P in 0..1"):
        m.latency_s(Scheme.parse("2:1:1"))


def test_project_format_round_trip(tmp_path):
    p = tiny_profile(rtt_s=0.015, codec=(CodecProfile(0, 8, 0.4, 0.003, 0.002),), header_bytes=12,
                     measured={"host": "x"}, encode_s_per_value=3e-8, decode_s_per_value=1e-8)
    save_profile(p, tmp_path / "p.json")
    q = load_profile(tmp_path / "p.json")
    assert q == p and q.measured == {"host": "x"}
    assert json.loads((tmp_path / "p.json").read_text())["format"] == "opt-coinfer-profile/1"


def test_seed_profile_rewritten_in_project_format_loads_the_same(tmp_path):
    p = load_profile(seed_path(SEED_PROFILE))
    (tmp_path / "q.json").write_text(json.dumps(profile_to_dict(p)))
    assert load_profile(tmp_path / "q.json") == p


def test_profile_errors(tmp_path):
    (tmp_path / "bad.json").write_text('{"model": "x"}')
    with pytest.raises(ProfileError, match="expected key 'input'"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "none.json")


def test_profile_command_measures_fmnist_vgg(tmp_path):
    from planner.__main__ import main
    out = tmp_path / "fm.json"
    assert main(["profile", "--model", "fmnist-vgg", "--out", str(out), "--repeats", "1",
                 "--warmup", "0", "--base-error", "0.08"]) == 0
    p = load_profile(out)
    assert p.model == "fmnist-vgg" and p.base_top1_error == 0.08
    assert [(q.conv_channels, q.height) for q in p.partitions] == [(32, 28), (32, 14), (64, 14),
                                                                   (64, 7), (128, 7), (128, 3)]
    assert all(q.device_head_s > 0 and q.cloud_tail_s > 0 for q in p.partitions)
    assert p.cloud_only_upload_bytes == 28 * 28 and p.measured["statistic"] == "median"


def test_cpu_quota_prices_the_device_from_cpu_seconds_and_the_budget(tmp_path):
    """Under a quota: light frames run at full speed but no stream spends more CPU per second
    than the share; a heavy head runs at the share after one period's budget."""
    cpu = DeviceCpu(share=0.1, period_s=0.1, head_cpu_s=(0.0005, 0.33), full_model_cpu_s=0.0006,
                    call_cpu_s=0.0007)
    p = tiny_profile(device_cpu=cpu, rtt_s=0.002)
    m = LatencyModel.from_profile(p, 2.0)
    # cloud-only: 1000 B at 2 Mbps + rtt + cloud = 0.026 s serial; the call's CPU / share = 0.007 s
    assert m.latency_s(CLOUD_ONLY) == pytest.approx(1000 * 8 / 2e6 + 0.002 + 0.02)
    fast = LatencyModel.from_profile(replace(p, cloud_only_upload_bytes=10, cloud_full_model_s=0.0001), 100.0)
    assert fast.latency_s(CLOUD_ONLY) == pytest.approx(0.007)        # the budget, not the link, sets it
    assert m.latency_s(DEVICE_ONLY) == pytest.approx(0.006)          # 0.6 ms CPU at a 10% share
    assert m.breakdown(DEVICE_ONLY).cpu_bound_s == pytest.approx(0.006)
    heavy = Scheme.parse("1:16:8")                                    # 0.33 s CPU: the budget runs out
    hb = m.breakdown(heavy)          # one frame: full speed for a period's budget, then 10%; a stream: 10%
    assert hb.total_s == pytest.approx(max(0.33 / 0.1 - 0.1 * 0.9 + hb.transfer_s + hb.cloud_s, 0.3307 / 0.1))
    light = Scheme.parse("0:8:8")                                     # 0.5 ms head + 0.7 ms call, 2 Mbps
    b = m.breakdown(light)
    assert b.cpu_bound_s == pytest.approx(0.012)
    assert b.total_s == pytest.approx(max(0.0005 + b.transfer_s + b.cloud_s, 0.012))
    rows = [(q, c, bits) for q in range(2) for c in (1, 8) for bits in (1, 4, 8)]
    assert list(m.split_latencies(*np.array(rows).T)) == [m.latency_s(Scheme.split(*r)) for r in rows]
    for s in (DEVICE_ONLY, CLOUD_ONLY, heavy, light):
        assert m.stages(s).total_s == m.latency_s(s)
    # without CPU figures the wall seconds stand, as before
    assert LatencyModel.from_profile(tiny_profile(rtt_s=0.002), 2.0).latency_s(DEVICE_ONLY) == 1.0
    # CPU between frames (the next image, the results) is rationed too; the stall it adds falls in
    # the frame for the frame's share of the cycle's CPU
    looped = replace(p, device_cpu=replace(cpu, loop_cpu_s=0.0003), cloud_only_upload_bytes=10,
                     cloud_full_model_s=0.0001)
    m2 = LatencyModel.from_profile(looped, 100.0)
    assert m2.latency_s(DEVICE_ONLY) == pytest.approx(0.006)         # whatever the loop: full CPU / share
    rest = 10 * 8 / 100e6 + 0.002 + 0.0001
    assert m2.latency_s(CLOUD_ONLY) == pytest.approx(rest + (0.001 / 0.1 - rest - 0.0003) * 0.7)
    assert m2.breakdown(CLOUD_ONLY).cpu_bound_s == pytest.approx(0.01)
    assert list(m2.split_latencies(*np.array(rows).T)) == [m2.latency_s(Scheme.split(*r)) for r in rows]
    save_profile(looped, tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json").device_cpu == looped.device_cpu
