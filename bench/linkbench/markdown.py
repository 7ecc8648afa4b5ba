"""The link bench's result as markdown: one table per rate, the rate change in a sentence, and
the ONNX device beside the torch one (the same model and rates, measured in the same run)."""
from __future__ import annotations

import json
from pathlib import Path

from bench.linkbench.config import AUTO, FOLLOW_TIMEOUT_S, SINGLE_END


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.4f}"


def _throttled(t: dict | None) -> str:
    return "-" if not t else f"{t['throttled_periods']}/{t['periods']}"


def table_lines(rate: dict) -> list[str]:
    bw, rtt = rate["bandwidth_mbps"], rate["link_rtt_s"]
    lines = [f"tc rate {rate['rate_mbps']:g} Mbps (goodput {rate['expected_goodput_mbps']:.4g}); device estimate "
             f"{'n/a' if bw is None else f'{bw:.4g}'} Mbps, rtt "
             f"{'n/a' if rtt is None else f'{rtt * 1e3:.2f}'} ms", "",
             "| scheme | ran | images | measured mean s | p50 s | predicted s | abs(pred-mean)/mean | "
             "bytes/img | predicted bytes | bytes from | fallbacks | device CPU ms/frame | predicted CPU ms | throttled periods | "
             "s per frame (wall / images) | predicted |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rate["rows"]:
        pred = "-" if r["predicted_s"] is None else f"{r['predicted_s']:.4f}"
        err = "-" if r["rel_error"] is None else f"{r['rel_error']:.1%}"
        name = f"**auto** -> {r['ran']}" if r["scheme"] == AUTO else r["scheme"]
        counts = "" if len(r["scheme_counts"]) <= 1 else " " + json.dumps(r["scheme_counts"]).replace("|", "/")
        lines.append(f"| {name} | {r['ran']}{counts} | {r['images']} | {r['measured_mean_s']:.4f} | "
                     f"{r['measured_p50_s']:.4f} | {pred} | {err} | {r['wire_bytes_mean']:.0f} | "
                     f"{'-' if r['predicted_bytes'] is None else r['predicted_bytes']} | {r['bytes_source']} | "
                     f"{r['fallbacks']} | {_ms(r.get('cpu_s_per_frame'))} | {_ms(r.get('predicted_cpu_s'))} | "
                     f"{_throttled(r.get('cpu_throttling'))} | {_s(r.get('measured_cycle_s'))} | "
                     f"{_s(r.get('predicted_cycle_s'))} |")
    med = rate["median_rel_error"]
    lines += ["", f"median abs(pred-meas)/meas over the non-auto schemes: {'n/a' if med is None else f'{med:.1%}'}; "
              f"live choice {rate['live_choice']} / best single-end ({rate['best_single_end']}): "
              f"{rate['live_over_best_single_end']:.3f}"]
    return lines


def rate_change_lines(rc: dict) -> list[str]:
    chk = rc["frame_check"]
    follow = (f"planned scheme changed {rc['planned_before']} -> {rc['planned_after']} after "
              f"{rc['frames_to_follow']} frames / {rc['seconds_to_follow']:.2f} s" if rc["followed"]
              else f"planned scheme stayed {rc['planned_before']} (not followed within {FOLLOW_TIMEOUT_S:g} s)")
    est = ("n/a" if rc["estimate_seconds"] is None else
           f"{rc['estimate_frames']} frames / {rc['estimate_seconds']:.2f} s")
    req = " ".join(rc.get("requirement") or []) or "the default requirement"
    return [f"auto under {req}, rate {rc['rate_a_mbps']:g} -> {rc['rate_b_mbps']:g} Mbps (tc change after frame "
            f"{rc['switch_after_frame']}): {follow}; bandwidth estimate within 25% of the new goodput "
            f"({rc['expected_goodput_b_mbps']:.3g} Mbps) after {est}; frames {chk['frames']}, request ids unique "
            f"{chk['unique_ids']}, consecutive {chk['consecutive']}"]


def markdown(result: dict) -> list[str]:
    cfg = result["config"]
    runtime = result.get("runtime", "torch")     # results written before the ONNX device have none
    label = result.get("label", result["model"])
    lines = [f"### {result['model']}, {runtime} device (device CPU quota {cfg['quota'] or 'none'}, "
             f"{cfg['limit']} images per scheme"
             + (", synthetic images: timing and bytes only" if cfg["synthetic_images"] else "") + ")", ""]
    for r in result["rates"]:
        lines += [f"#### {r['rate_mbps']:g} Mbps", "", *table_lines(r), ""]
        if r.get("png"):
            lines += [f"![{label} at {r['rate_mbps']:g} Mbps]({Path(r['png']).name})", ""]
    if result["rate_change"]:
        lines += ["#### Rate change during auto", "", *rate_change_lines(result["rate_change"]), ""]
    return lines


def _row(rate: dict, scheme: str) -> dict | None:
    return next((r for r in rate["rows"] if r["scheme"] == scheme), None)


def _ratio(a: dict | None, b: dict | None) -> str:
    return "-" if a is None or b is None else f"{a['measured_mean_s'] / b['measured_mean_s']:.3f}"


def runtime_comparison_lines(results: list[dict]) -> list[str]:
    """One row per model and rate run on both device runtimes: each live choice, auto's mean
    latency on each, and onnx / torch of the mean for auto and both single ends."""
    by = {(r["model"], r.get("runtime", "torch")): r for r in results}
    rows = []
    for (model, runtime), torch_res in by.items():
        onnx_res = by.get((model, "onnx"))
        if runtime != "torch" or onnx_res is None:
            continue
        onnx_rates = {r["rate_mbps"]: r for r in onnx_res["rates"]}
        for t in torch_res["rates"]:
            o = onnx_rates.get(t["rate_mbps"])
            if o is None:
                continue
            ta, oa = _row(t, AUTO), _row(o, AUTO)
            rows.append(f"| {model} | {t['rate_mbps']:g} | {t['live_choice']} | {o['live_choice']} | "
                        f"{ta['measured_mean_s']:.4f} | {oa['measured_mean_s']:.4f} | {_ratio(oa, ta)} | "
                        + " | ".join(_ratio(_row(o, s), _row(t, s)) for s in SINGLE_END) + " |")
    if not rows:
        return []
    return ["| model | tc Mbps | live choice, torch | live choice, onnx | auto mean s, torch | auto mean s, onnx | "
            "auto onnx / torch | " + " | ".join(f"{s} onnx / torch" for s in SINGLE_END) + " |",
            "|---|---:|---|---|---:|---:|---:|" + "---:|" * len(SINGLE_END), *rows]
