#!/usr/bin/env python3
"""The summary of scripts/cuda-check.sh (markdown on stdout): the stages, the tests labelled cuda, and xpo's CUDA
benchmarks (OUTDIR/bench-xpo.json, Google Benchmark) next to transformers' (OUTDIR/bench-hf.json) with their ratio
and each one's fraction of the GPU's limits measured in the same run (xpo's cuda/peak/*; transformers' own
measurement is shown beside them).

The fractions use one model of the work, the same for both rows (random weights, so only the shapes matter):
  N_body = layers x (H x (heads + 2 kv_heads) x head_dim + heads x head_dim x H + 3 H x intermediate)
  N_head = vocab x H (the tied LM head)
  decoding, B rows, P prompt tokens, T new: FLOPs = 2 N_body B P + 2 N_head B (prefill; logits of the last
    position only) + 2 (N_body + N_head) B T (one token per row per step) + attention 4 layers heads head_dim B x
    (P^2 / 2 + P T + T^2 / 2); bytes at least = the bf16 weights once per step (2 (N_body + N_head) (T + 1)) + the
    KV cache read at each step (2 layers B kv_heads head_dim 2 bytes x (P T + T^2 / 2)).
  one XPO step: both samples' decoding as above (policy and reference), the reward model's forward over 2B rows of
    P + T tokens (2 N_body 2B (P + T)), the reference's forward (2 N_body 2B (P + T) + 2 N_head 2B T) and the
    policy's forward + backward (3 x that); attention terms likewise. The optimizer's work is not counted.
A fraction is the model's FLOPs (or bytes) over the measured time, divided by the measured bf16 matmul rate (or
copy bandwidth): how much of the GPU the work used, not a claim that the work could reach 1.
"""
import argparse
import json
import os
import re
import sys


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def params(s):
    h, d = s["hidden"], s["head_dim"]
    body = s["layers"] * (h * (s["heads"] + 2 * s["kv_heads"]) * d + s["heads"] * d * h + 3 * h * s["intermediate"])
    return body, s["vocab"] * h


def attention_flops(s, rows, prompt, new):
    return 4.0 * s["layers"] * s["heads"] * s["head_dim"] * rows * (prompt * prompt / 2 + prompt * new + new * new / 2)


def decode_work(s, b, p, t):
    body, head = params(s)
    flops = 2.0 * body * b * p + 2.0 * head * b + 2.0 * (body + head) * b * t + attention_flops(s, b, p, t)
    kv = 2.0 * s["layers"] * b * s["kv_heads"] * s["head_dim"] * 2 * (p * t + t * t / 2)
    return flops, 2.0 * (body + head) * (t + 1) + kv


def step_flops(s, b, p, t):
    body, head = params(s)
    generation = 2 * decode_work(s, b, p, t)[0]
    rows, n = 2 * b, p + t
    forward = 2.0 * body * rows * n + 2.0 * head * rows * t + attention_flops(s, rows, n, 0)
    scoring = 2.0 * body * rows * n + attention_flops(s, rows, n, 0)
    return generation + scoring + forward + 3 * forward


def xpo_benchmarks(path):
    """{name without the /iterations:/manual_time suffixes: entry} from Google Benchmark's JSON."""
    data = load_json(path)
    if not data:
        return {}, None
    out = {}
    for e in data.get("benchmarks", []):
        name = re.sub(r"/(iterations|manual_time|real_time).*$", "", e.get("name", ""))
        out[name] = e
    return out, data.get("context", {})


def shape_of(entry):
    keys = ["hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab"]
    if not all(k in entry for k in keys):
        return None
    return {k: int(entry[k]) for k in keys}


def fmt(x, digits=3):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def tests_section(out_dir):
    lines = []
    try:
        with open(os.path.join(out_dir, "tests.log"), errors="replace") as f:
            log = f.read().splitlines()
    except OSError:
        return ["No tests.log."]
    results, skips = [], {}
    last_skip = None
    for i, line in enumerate(log):
        m = re.match(r"^\s*\d+/\d+ Test\s+#\d+: (\S+) \.*\s*(\*{0,3}\w+.*?)\s+([\d.]+ sec)", line)
        if m:
            results.append((m.group(1), m.group(2).strip("* "), m.group(3)))
        stripped = re.sub(r"^\d+: ", "", line)
        if stripped.endswith("Skipped") and i + 1 < len(log):
            last_skip = re.sub(r"^\d+: ", "", log[i + 1]).strip()
        m = re.match(r"^\[  SKIPPED \] (\S+)", stripped)
        if m and last_skip:
            skips[m.group(1)] = last_skip
    summary = [l for l in log if re.search(r"tests passed, \d+ tests failed out of", l)]
    lines += summary[-1:] or ["(ctest did not finish: see tests.log)"]
    if results:
        reasons = {skips.get(name) for name, result, _ in results if "kip" in result}
        shared = len(reasons) == 1 and None not in reasons and all("kip" in r for _, r, _ in results)
        if shared:
            lines += ["", "Every test skipped: " + reasons.pop()]
        lines += ["", "| test | result | time |", "| --- | --- | --- |"]
        for name, result, secs in results:
            reason = f" ({skips[name]})" if name in skips and "kip" in result and not shared else ""
            lines.append(f"| {name} | {result}{reason} | {secs} |")
    measured = {}
    for line in log:
        m = re.search(r"\[ measured \] (\S+) (.*): max \|a - e\| / \(1 \+ \|e\|\) = (\S+)", line)
        if m:
            what = m.group(2)
            measured.setdefault(what, []).append((float(m.group(3)), m.group(1)))
    if measured:
        lines += ["", "| comparison (each test's tolerance is in tests/cuda/) | largest max \\|a − e\\| / (1 + \\|e\\|) | on |",
                  "| --- | --- | --- |"]
        for what, values in sorted(measured.items()):
            worst = max(values)
            lines.append(f"| {what} | {worst[0]:.3g} | {worst[1]} |")
    stand_in = [l for l in log if re.search(r"^\[  (PASSED|FAILED)  \] \d+ tests?[.,]", l)]
    if stand_in:
        lines += ["", "With the CPU in the GPU's place (XPO_CUDA_TESTS_ON_CPU=1): " + "; ".join(stand_in)]
    train = [l for l in log if l.startswith("xpo-train:") or l.startswith("==== xpo-train")]
    if train:
        lines += ["", "xpo-train on the device, its last lines:", "```"] + train[-4:] + ["```"]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--stages", required=True)
    ap.add_argument("--mode", default="gpu")
    args = ap.parse_args()
    md = [f"# xpo CUDA check ({args.mode})", ""]
    try:
        with open(os.path.join(args.out, "env.txt")) as f:
            md += ["```"] + [l.rstrip() for l in f if l.strip()][:30] + ["```", ""]
    except OSError:
        pass

    md += ["## Stages", "", "| stage | result | seconds | limit |", "| --- | --- | --- | --- |"]
    try:
        with open(args.stages) as f:
            for row in f:
                parts = row.rstrip("\n").split("\t")
                md.append("| " + " | ".join(parts + [""] * (4 - len(parts))) + " |")
    except OSError:
        md.append("| (no stages recorded) | | | |")

    md += ["", "## Tests labelled cuda", ""] + tests_section(args.out)

    xpo, context = xpo_benchmarks(os.path.join(args.out, "bench-xpo.json"))
    hf = load_json(os.path.join(args.out, "bench-hf.json")) or {}
    md += ["", "## Benchmarks: xpo (C++) and transformers, same GPU, same run", ""]
    skipped = [f"{n}: {e.get('error_message')}" for n, e in xpo.items() if e.get("error_occurred") and n.startswith("cuda/")]
    if skipped:
        md += ["xpo's cuda/ benchmarks did not run: " + skipped[0] + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""), ""]
    if hf.get("skipped"):
        md += ["transformers: " + hf["skipped"], ""]

    peaks = {}
    mm, cp = xpo.get("cuda/peak/bf16_matmul", {}), xpo.get("cuda/peak/copy", {})
    hl = hf.get("limits") or {}
    if "flops" in mm:
        peaks["flops"] = mm["flops"]
    if "bytes_per_s" in cp:
        peaks["bw"] = cp["bytes_per_s"]
    md += ["| the GPU's limits | measured by xpo (C++) | measured by torch (Python) |", "| --- | --- | --- |",
           f"| bf16 matmul, TFLOP/s | {fmt(mm.get('flops', 0) / 1e12 or None)} | {fmt(hl.get('bf16_matmul_flops', 0) / 1e12 or None)} |",
           f"| copy bandwidth (read + write), TB/s | {fmt(cp.get('bytes_per_s', 0) / 1e12 or None)} | {fmt(hl.get('copy_bytes_per_s', 0) / 1e12 or None)} |",
           ""]
    if not peaks and hl and not hf.get("tiny"):
        peaks = {"flops": hl.get("bf16_matmul_flops"), "bw": hl.get("copy_bytes_per_s")}

    rows = []
    hf_decode = {r["batch"]: r for r in hf.get("decode") or []}
    for name, e in sorted(xpo.items(), key=lambda kv: float(kv[1].get("batch", 0))):
        if not name.startswith("cuda/decode/") or e.get("error_occurred"):
            continue
        b = int(e["batch"])
        s = shape_of(e)
        p, t = int(e["prompt_tokens"]), int(e["new_tokens"])
        flops, nbytes = decode_work(s, b, p, t)
        x_sec = e["seconds"] / max(1, e.get("iterations", 3))
        h = hf_decode.get(b)
        h_sec = sum(h["seconds"]) / len(h["seconds"]) if h else None
        rows.append((f"decode B={b}: tokens/s", e["tokens_per_s"], h["tokens_per_s"] if h else None,
                     e["tokens_per_s"] / h["tokens_per_s"] if h else None,
                     [(flops / x_sec, nbytes / x_sec), (flops / h_sec, nbytes / h_sec) if h_sec else None]))
    step = xpo.get("cuda/xpo_step/B:8")
    hs = hf.get("xpo_step")
    if step and not step.get("error_occurred"):
        s = shape_of(step)
        flops = step_flops(s, int(step["batch"]), round(step["prompt_tokens"]), int(step["new_tokens"]))
        rows.append(("XPO step B=8: seconds (ratio: transformers / xpo)", step["step_s"], hs["step_s"] if hs else None,
                     hs["step_s"] / step["step_s"] if hs else None,
                     [(flops / step["step_s"], None), (flops / hs["step_s"], None) if hs else None]))
    if rows:
        md += ["| measure | xpo | transformers | xpo over transformers | xpo: FLOP / bandwidth fraction | transformers: FLOP / bandwidth fraction |",
               "| --- | --- | --- | --- | --- | --- |"]
        for label, x, h, ratio, rates in rows:
            fr = []
            for r in rates:
                if r is None or not peaks.get("flops"):
                    fr.append("—")
                    continue
                f = r[0] / peaks["flops"]
                bw = (r[1] / peaks["bw"]) if (r[1] is not None and peaks.get("bw")) else None
                fr.append(f"{100 * f:.3g}% / " + (f"{100 * bw:.3g}%" if bw is not None else "—"))
            md.append(f"| {label} | {fmt(x)} | {fmt(h)} | {fmt(ratio)} | {fr[0]} | {fr[1]} |")
        if step and hs:
            md += ["", "| XPO step stage, seconds | xpo | transformers |", "| --- | --- | --- |"]
            for k in ["generation_s", "scoring_s", "forward_backward_s", "optimizer_s", "step_s"]:
                md.append(f"| {k[:-2]} | {fmt(step.get(k))} | {fmt(hs.get(k))} |")
            md += ["", f"Prompt tokens: xpo {fmt(step.get('prompt_tokens'))} (Qwen's tokenizer), transformers "
                       f"{hs.get('prompt_tokens')} (random ids); new tokens {int(step.get('new_tokens', 0))} per sample."]
    else:
        md += ["No xpo / transformers pair to compare (the GPU benchmarks did not run)."]
    smoke = [(n, e) for n, e in xpo.items() if n.startswith("smoke/")]
    if smoke:
        md += ["", "Smoke runs (the same code at a tiny size on " + ("the GPU" if peaks else "the CPU") + "): " +
               "; ".join(f"{n} {'error: ' + e.get('error_message', '') if e.get('error_occurred') else 'ok'}" for n, e in smoke)]
    if context:
        md += ["", f"Google Benchmark context: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs, "
                   f"library build {context.get('library_build_type', '?')}."]
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
