#!/usr/bin/env python3
"""The transformers side of xpo's CUDA benchmarks (benchmarks/cuda_bench.cpp), on the same GPU and torch.

Measures, at Qwen2.5-0.5B's shape with random weights (hidden 896, 24 layers, 14 heads / 2 KV heads,
intermediate 4864, vocab 151936, tied embeddings):
  - the GPU's bf16 matmul rate (8192^3 products of random matrices) and copy bandwidth (a 2 GiB device-to-device
    copy, bytes read + written), the medians of 10, as xpo's cuda/peak/* do;
  - decoding with transformers' generate (do_sample, temperature 1, top_k 0, top_p 1, KV cache, sdpa attention),
    bf16 weights, B = 1, 8, 64 prompts of 128 random tokens, 128 new tokens: generated tokens per second;
  - one XPO step written as TRL's XPOTrainer does it, with transformers and torch only (TRL is not imported):
    policy (float32 master weights under bf16 autocast, as --bf16) and reference (bf16) each sample a completion
    per prompt, a reward model of the same shape (bf16, Qwen2ForSequenceClassification) scores both at the last
    real token with the missing-EOS penalty, the policy (with grad) and the reference forward over the 2B rows
    [prompt; completion], per-token log-probs in float32, the XPO loss (sigmoid DPO loss + alpha x the policy's
    log-prob of the reference's completion), backward, gradient clipping at 1.0 and AdamW (fused where torch has
    it, weight decay 0, lr 5e-7); B = 8 prompts of 128 random tokens, 64 new tokens.
Prints the results as JSON (and writes them to --out). --tiny runs the same code at a tiny shape (for a CPU dry
run); without transformers the model parts are reported as skipped and only the limits are measured.
"""
import argparse
import contextlib
import json
import statistics
import sys
import time

import torch

QWEN_0P5B = dict(vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864,
                 bos=151643, eos=151645, pad=151643)
TINY = dict(vocab=1000, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, bos=1, eos=2, pad=0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    """Seconds of fn() with the device synchronised before and after, and fn's result."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def median_seconds(device, fn, warmups, repeats):
    for _ in range(warmups):
        fn()
    return statistics.median(timed(device, fn)[0] for _ in range(repeats))


def measure_limits(device, tiny):
    n = 256 if tiny else 8192
    torch.manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    mm = median_seconds(device, lambda: torch.mm(a, b, out=c), 3, 10)
    del a, b, c
    nbytes = (16 << 20) if tiny else (2 << 30)
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    copy = median_seconds(device, lambda: dst.copy_(src), 2, 10)
    del src, dst
    return {"bf16_matmul_flops": 2.0 * n ** 3 / mm, "matmul_n": n,
            "copy_bytes_per_s": 2.0 * nbytes / copy, "copy_bytes": nbytes}


def qwen2_config(shape, reward_model):
    from transformers import Qwen2Config
    head_dim = shape["hidden"] // shape["heads"]
    config = Qwen2Config(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], max_position_embeddings=32768, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=shape["bos"],
                         eos_token_id=shape["eos"], pad_token_id=shape["pad"], attention_dropout=0.0)
    if reward_model:
        config.num_labels = 1
    assert config.hidden_size // config.num_attention_heads == head_dim
    return config


def build(kind, config, device, dtype):
    """A randomly initialised model built directly on `device` (transformers' own initialisation), in `dtype`."""
    import transformers
    cls = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForSequenceClassification
    on_device = device if hasattr(torch.device, "__enter__") else contextlib.nullcontext()
    torch.manual_seed(0)
    with on_device:
        model = cls.from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype)


def new_tokens_until_eos(sequences, prompt_len, eos):
    """Generated tokens per row up to and including the first EOS (what xpo's completion mask counts)."""
    new = sequences[:, prompt_len:]
    is_eos = new.eq(eos)
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, torch.full_like(is_eos[:, 0], new.shape[1], dtype=torch.long))
    return int(first.sum())


def decode(shape, device, batches, prompt_len, new_tokens):
    config = qwen2_config(shape, reward_model=False)
    model = build("causal", config, device, torch.bfloat16).eval()
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=shape["pad"], eos_token_id=shape["eos"])
    gen = torch.Generator().manual_seed(1234)
    rows = []
    for b in batches:
        ids = torch.randint(0, shape["vocab"], (b, prompt_len), generator=gen).to(device)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, **kwargs)  # warm-up
            seconds, tokens = [], []
            for _ in range(3):
                s, out = timed(device, lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, **kwargs))
                seconds.append(s)
                tokens.append(new_tokens_until_eos(out, prompt_len, shape["eos"]))
        rows.append({"batch": b, "prompt_tokens": prompt_len, "new_tokens": new_tokens, "seconds": seconds, "tokens": tokens,
                     "tokens_per_s": sum(tokens) / sum(seconds)})
        print(f"hf decode B={b}: {rows[-1]['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    del model
    return rows


def truncate_right(completions, eos, pad):
    """TRL's truncate_right: tokens after the first EOS become pad; mask 1 up to and including it."""
    is_eos = completions.eq(eos)
    width = completions.shape[1]
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), torch.full_like(is_eos[:, 0], width, dtype=torch.long))
    positions = torch.arange(width, device=completions.device).unsqueeze(0)
    after = positions > first.unsqueeze(1)
    return completions.masked_fill(after, pad), (~after).long()


def token_logps(logits, ids):
    """Per-token log-probs in float32 (TRL's selective_log_softmax): logits [N, T, V], ids [N, T] -> [N, T]."""
    return torch.gather(logits.float().log_softmax(-1), -1, ids.unsqueeze(-1)).squeeze(-1)


class XPOStep:
    """One optimizer step of TRL's XPOTrainer (sigmoid loss, one alpha and beta), written with transformers."""

    def __init__(self, shape, device, batch, prompt_len, new_tokens, alpha=1e-5, beta=0.1, missing_eos_penalty=1.0):
        self.shape, self.device = shape, device
        self.prompt_len, self.new_tokens = prompt_len, new_tokens
        self.alpha, self.beta, self.penalty = alpha, beta, missing_eos_penalty
        config = qwen2_config(shape, reward_model=False)
        self.policy = build("causal", config, device, torch.float32).train()
        self.ref = build("causal", config, device, torch.bfloat16).eval()
        self.ref.load_state_dict(self.policy.state_dict())
        self.ref.requires_grad_(False)
        self.rm = build("reward", qwen2_config(shape, reward_model=True), device, torch.bfloat16).eval()
        self.rm.requires_grad_(False)
        fused = {"fused": True} if device.type == "cuda" and "fused" in torch.optim.AdamW.__init__.__code__.co_varnames else {}
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=5e-7, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **fused)
        gen = torch.Generator().manual_seed(11)
        self.prompts = torch.randint(0, shape["vocab"], (batch, prompt_len), generator=gen).to(device)
        self.prompt_mask = torch.ones_like(self.prompts)
        self.kwargs = dict(do_sample=True, temperature=0.9, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                           pad_token_id=shape["pad"], eos_token_id=shape["eos"])

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def scores(self, completions, completion_mask):
        """The reward model's score at each row's last real token (TRL's get_reward)."""
        ids = torch.cat([self.prompts, completions], 1)
        mask = torch.cat([self.prompt_mask, completion_mask], 1)
        with torch.no_grad():
            hidden = self.rm.model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(-1) - 1
            return self.rm.score(hidden[torch.arange(ids.shape[0], device=ids.device), last]).squeeze(-1).float()

    def run(self):
        d, eos, pad, p = self.device, self.shape["eos"], self.shape["pad"], self.prompt_len
        times = {}
        t0 = time.perf_counter()
        with torch.no_grad():
            with self.autocast():
                model_out = self.policy.generate(input_ids=self.prompts, attention_mask=self.prompt_mask, **self.kwargs)
            ref_out = self.ref.generate(input_ids=self.prompts, attention_mask=self.prompt_mask, **self.kwargs)
        sync(d)
        t1 = time.perf_counter()
        model_c, model_m = truncate_right(model_out[:, p:], eos, pad)
        ref_c, ref_m = truncate_right(ref_out[:, p:], eos, pad)
        model_eos, ref_eos = model_c.eq(eos).any(-1), ref_c.eq(eos).any(-1)
        model_scores = self.scores(model_c, model_m) - self.penalty * (~model_eos).float()
        ref_scores = self.scores(ref_c, ref_m) - self.penalty * (~ref_eos).float()
        chosen = model_scores >= ref_scores
        sync(d)
        t2 = time.perf_counter()
        width = max(model_c.shape[1], ref_c.shape[1])
        pad_to = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)
        completions = torch.cat([pad_to(model_c, pad), pad_to(ref_c, pad)])
        completion_mask = torch.cat([pad_to(model_m, 0), pad_to(ref_m, 0)])
        ids = torch.cat([torch.cat([self.prompts, self.prompts]), completions], 1)
        mask = torch.cat([torch.cat([self.prompt_mask, self.prompt_mask]), completion_mask], 1)
        with torch.no_grad():
            ref_logits = self.ref(input_ids=ids, attention_mask=mask).logits[:, p - 1:-1]
            ref_logps = (token_logps(ref_logits, completions) * completion_mask).sum(-1)
            del ref_logits
        with self.autocast():
            logits = self.policy(input_ids=ids, attention_mask=mask).logits[:, p - 1:-1]
        policy_logps = (token_logps(logits, completions) * completion_mask).sum(-1)
        b = self.prompts.shape[0]
        pm, pr, rm_, rr = policy_logps[:b], policy_logps[b:], ref_logps[:b], ref_logps[b:]
        chosen_policy, rejected_policy = torch.where(chosen, pm, pr), torch.where(chosen, pr, pm)
        chosen_ref, rejected_ref = torch.where(chosen, rm_, rr), torch.where(chosen, rr, rm_)
        margins = (chosen_policy - chosen_ref) - (rejected_policy - rejected_ref)
        dpo = -torch.nn.functional.logsigmoid(self.beta * margins)
        xpo = self.alpha * pr
        loss = (dpo + xpo).mean()
        loss.backward()
        sync(d)
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(d)
        t4 = time.perf_counter()
        times.update(generation_s=t1 - t0, scoring_s=t2 - t1, forward_backward_s=t3 - t2, optimizer_s=t4 - t3, step_s=t4 - t0,
                     loss=float(loss.detach()), new_tokens_generated=int(model_m.sum() + ref_m.sum()))
        return times


def xpo_step(shape, device, batch, prompt_len, new_tokens):
    step = XPOStep(shape, device, batch, prompt_len, new_tokens)
    step.run()  # warm-up (AdamW's state allocated here, as xpo's benchmark warms up)
    runs = [step.run() for _ in range(3)]
    result = {key: statistics.mean(r[key] for r in runs) for key in runs[0]}
    result.update(batch=batch, prompt_tokens=prompt_len, new_tokens=new_tokens,
                  tokens_per_s=2.0 * batch * new_tokens / result["step_s"])
    print(f"hf xpo step B={batch}: {result['step_s']:.3f} s", file=sys.stderr)
    del step
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape and batch (a CPU dry run)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = TINY if args.tiny else QWEN_0P5B
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "tiny": args.tiny, "shape": shape, "skipped": None}
    result["limits"] = measure_limits(device, args.tiny)
    try:
        import transformers
        result["transformers"] = transformers.__version__
    except ImportError as e:
        result["transformers"] = None
        result["skipped"] = f"transformers is not installed here ({e}): only the limits were measured"
    if result["skipped"] is None:
        if args.tiny:
            result["decode"] = decode(shape, device, [1, 2], 16, 8)
            result["xpo_step"] = xpo_step(shape, device, 2, 16, 4)
        else:
            result["decode"] = decode(shape, device, [1, 8, 64], 128, 128)
            result["xpo_step"] = xpo_step(shape, device, 8, 128, 64)
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
