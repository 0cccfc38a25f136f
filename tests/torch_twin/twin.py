#!/usr/bin/env python3
"""PyTorch twin of blockdiff's block-diffusion transformer.

The same architecture written the way a PyTorch user would (nn.Module, F.rms_norm,
F.scaled_dot_product_attention, torch.optim.AdamW), loading blockdiff's own `model.safetensors`
+ `config.json`. Given a case directory written by `blockdiff bench twin` (crates/core/src/twin.rs)
it

1. recomputes blockdiff's logits on the case's inputs and reports the largest |difference|
   (our checkpoints are usable from PyTorch iff this is ~1e-6);
2. times one BD3-LM training step and one full block-diffusion sample (KV cache of finished
   blocks, fixed top-k commits per call: the same model calls as blockdiff's sampler).

Usage: twin.py --case DIR --out RESULT.json [--check-only] [--device cuda]

With `--device cuda` every tensor is made on the GPU (torch's default device) and the clocks
are read after `torch.cuda.synchronize()`, so they see finished work.
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

MASK, BOS = 0, 1


class Layer(nn.Module):
    def __init__(self, d, heads, ff, eps):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.attn_norm = nn.Parameter(torch.ones(d))
        self.mlp_norm = nn.Parameter(torch.ones(d))
        lin = lambda i, o: nn.Linear(i, o, bias=False)
        self.wq, self.wk, self.wv, self.wo = lin(d, d), lin(d, d), lin(d, d), lin(d, d)
        self.w_gate, self.w_up, self.w_down = lin(d, ff), lin(d, ff), lin(ff, d)

    def forward(self, x, cos, sin, past, allowed):
        b, n, d = x.shape
        dh = d // self.heads
        h = F.rms_norm(x, (d,), self.attn_norm, self.eps)
        split = lambda t: t.view(b, n, self.heads, dh).transpose(1, 2)
        q = rope(split(self.wq(h)), cos, sin)
        k = rope(split(self.wk(h)), cos, sin)
        v = split(self.wv(h))
        own = (k, v)
        if past is not None:
            k = torch.cat([past[0], k], 2)
            v = torch.cat([past[1], v], 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.wo(a.transpose(1, 2).reshape(b, n, d))
        h = F.rms_norm(x, (d,), self.mlp_norm, self.eps)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h)), own


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def rope_tables(positions, head_dim, theta):
    # f64 angles, then f32 — as blockdiff computes them.
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    inv = theta ** (-(2.0 * i) / head_dim)
    a = torch.tensor(positions, dtype=torch.float64)[:, None] * inv[None, :]
    return a.cos().float(), a.sin().float()


class BlockDiffusion(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.heads = cfg["d_model"], cfg["n_heads"]
        ff = cfg["d_ff"] or (d * 8 // 3 + 7) // 8 * 8
        self.eps, self.theta = cfg["norm_eps"], cfg["rope_theta"]
        self.embedding = nn.Embedding(cfg["vocab_size"], d)
        self.layers = nn.ModuleList(Layer(d, self.heads, ff, self.eps) for _ in range(cfg["n_layers"]))
        self.norm = nn.Parameter(torch.ones(d))
        self.head = nn.Linear(d, cfg["vocab_size"], bias=False)
        self.cond_len = cfg["cond_len"]
        if cfg["cond_dim"]:
            self.cond_fc1 = nn.Linear(cfg["cond_dim"], d)
            self.cond_fc2 = nn.Linear(d, d)
            self.cond_null = nn.Parameter(torch.zeros(cfg["cond_len"], d))
        if cfg["token_feature_dim"]:
            self.feature_proj = nn.Linear(cfg["token_feature_dim"], d, bias=False)
            self.register_buffer("token_features", torch.zeros(cfg["vocab_size"], cfg["token_feature_dim"]))
        else:
            self.feature_proj = None

    def load_blockdiff(self, path):
        """Loads blockdiff's `model.safetensors`. burn stores a Linear weight as [in, out],
        PyTorch as [out, in]; RMSNorm gains are `*.gamma`; the condition encoder is `cond.*`."""
        own = {}
        for name, t in load_file(path).items():
            if name.endswith(".weight") and name != "embedding.weight":
                t = t.t().contiguous()
            key = name.removesuffix(".gamma")
            key = key.replace("cond.fc", "cond_fc").replace("cond.null", "cond_null")
            own[key] = t
        self.load_state_dict(own, strict=True)

    def hidden(self, tokens, positions, cond=None, past=None, allowed=None):
        x = self.embedding(tokens)
        if self.feature_proj is not None:
            x = x + self.feature_proj(self.token_features[tokens])
        n_cond = 0
        if cond is not None:
            c = self.cond_fc2(F.silu(self.cond_fc1(cond)))
            n_cond = c.shape[1]
            start = positions[0] - n_cond
            positions = list(range(start, start + n_cond)) + list(positions)
            x = torch.cat([c, x], 1)
        cos, sin = rope_tables(positions, x.shape[-1] // self.heads, self.theta)
        kvs = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, cos, sin, None if past is None else past[i], allowed)
            kvs.append(kv)
        return x, kvs, n_cond

    def logits(self, h):
        return self.head(F.rms_norm(h, (h.shape[-1],), self.norm, self.eps))


def training_allowed(ctx, length, block):
    """BD3-LM mask over [ctx ⊕ x_t ⊕ x_0] (True = may attend)."""
    n = ctx + 2 * length
    idx = torch.arange(n)
    is_ctx = idx < ctx
    clean = idx >= ctx + length
    blk = torch.where(clean, idx - ctx - length, idx - ctx) // block
    q_clean, k_clean = clean[:, None], clean[None, :]
    qb, kb = blk[:, None], blk[None, :]
    noisy_noisy = ~q_clean & ~k_clean & (qb == kb)
    noisy_clean = ~q_clean & k_clean & (kb < qb)
    clean_clean = q_clean & k_clean & (kb <= qb)
    tok = (noisy_noisy | noisy_clean | clean_clean) & ~is_ctx[:, None]
    return is_ctx[None, :] | tok


def check(model, case):
    out = []
    with torch.inference_mode():
        for c in case["checks"]:
            tokens = torch.tensor(c["tokens"], dtype=torch.long)
            cond = None
            if c["cond"] is not None:
                cond = torch.tensor(c["cond"], dtype=torch.float32).view(tokens.shape[0], model.cond_len, -1)
            allowed = ~torch.tensor(c["mask"], dtype=torch.bool)
            h, _, n_cond = model.hidden(tokens, c["positions"], cond, None, allowed)
            logits = model.logits(h[:, n_cond + c["from"] : n_cond + c["from"] + c["len"]])
            ours = torch.tensor(c["logits"], dtype=torch.float32).view(logits.shape)
            out.append((c["name"], float((logits - ours).abs().max())))
    return out


def sync():
    if torch.cuda.is_available() and torch.get_default_device().type == "cuda":
        torch.cuda.synchronize()


def time_training(cfg, spec):
    torch.manual_seed(spec["seed"])
    model = BlockDiffusion(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    L, b, B = spec["seq_len"], spec["block_size"], spec["train_batch"]
    n_sym = spec["n_symbols"]
    x0 = torch.randint(4, 4 + n_sym, (B, L))
    allowed = training_allowed(0, L, b)
    positions = list(range(L)) * 2
    times = []
    for step in range(spec["train_steps"] + 1):
        t0 = time.perf_counter()
        # One masking rate per block, stratified across the batch (antithetic), t in [0.02, 1].
        nb = B * (L // b)
        u = (torch.rand(()) + torch.arange(nb) / nb) % 1.0
        t = 0.02 + 0.98 * u[torch.randperm(nb)]
        t_tok = t.view(B, L // b).repeat_interleave(b, 1)
        masked = torch.rand(B, L) < t_tok
        xt = torch.where(masked, torch.full_like(x0, MASK), x0)
        w = masked.float() / t_tok
        h, _, _ = model.hidden(torch.cat([xt, x0], 1), positions, None, None, allowed)
        logits = model.logits(h[:, :L])
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x0.reshape(-1), reduction="none")
        loss = (nll * w.reshape(-1)).sum() / (B * L)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        if step > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def sample(model, batch, L, b, k):
    """Block-diffusion sampling with a KV cache of finished blocks; a finished block's clean
    K/V are computed in the next block's first call (its rows cannot see the new block)."""
    cache, pending, nfe = None, None, 0
    out = []
    for start in range(0, L, b):
        block = torch.full((batch, b), MASK, dtype=torch.long)
        while True:
            if pending is None:
                toks, pos, allowed = block, list(range(start, start + b)), None
            else:
                toks, pos = torch.cat([pending, block], 1), list(range(start - b, start + b))
                past = 0 if cache is None else cache[0][0].shape[2]
                allowed = torch.ones(2 * b, past + 2 * b, dtype=torch.bool)
                allowed[:b, past + b :] = False
            h, kvs, _ = model.hidden(toks, pos, None, cache, allowed)
            nfe += 1
            if pending is not None:
                clean = [(k_[:, :, :b], v_[:, :, :b]) for k_, v_ in kvs]
                cache = clean if cache is None else [
                    (torch.cat([c[0], n[0]], 2), torch.cat([c[1], n[1]], 2)) for c, n in zip(cache, clean)
                ]
                pending = None
            # The head only where some row is still masked, as blockdiff's sampler does.
            masked = block == MASK
            rows = masked.any(0).nonzero().flatten()
            logits = model.logits(h[:, -b:][:, rows])
            logits[..., MASK] = -math.inf
            logits[..., BOS] = -math.inf
            probs = logits.softmax(-1)
            drawn = torch.multinomial(probs.view(-1, probs.shape[-1]), 1).view(batch, len(rows))
            tok = torch.full_like(block, MASK)
            tok[:, rows] = drawn
            conf = torch.full(block.shape, -1.0, device=block.device)
            conf[:, rows] = probs.gather(-1, drawn[..., None]).squeeze(-1)
            conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
            top = conf.topk(min(k, b), dim=-1)
            commit = torch.zeros_like(masked)
            commit.scatter_(1, top.indices, top.values >= 0)
            block = torch.where(commit, tok, block)
            if not (block == MASK).any():
                break
        pending = block
        out.append(block)
    return torch.cat(out, 1), nfe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--device", default="cpu", help="torch device for every tensor: cpu or cuda")
    args = ap.parse_args()
    torch.set_default_device(torch.device(args.device))
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    case = json.load(open(os.path.join(args.case, "case.json")))
    cfg = json.load(open(os.path.join(args.case, "config.json")))
    spec = case["spec"]
    model = BlockDiffusion(cfg)
    model.load_blockdiff(os.path.join(args.case, "model.safetensors"))
    checks = check(model, case)
    result = {
        "torch": torch.__version__ + ("" if args.device == "cpu" else f" on {args.device}"),
        "checks": checks,
        "max_abs_logit_diff": max(d for _, d in checks),
        "timings": None,
    }
    if not args.check_only:
        timing_cfg = dict(cfg, cond_dim=0, cond_len=0, token_feature_dim=0)
        train_s = time_training(timing_cfg, spec)
        torch.manual_seed(spec["seed"])
        tmodel = BlockDiffusion(timing_cfg).eval()
        sample_s, nfe = [], 0
        for batch in spec["sample_batches"]:
            runs = []
            for rep in range(spec["repeats"] + 1):
                sync()
                t0 = time.perf_counter()
                _, nfe = sample(tmodel, batch, spec["seq_len"], spec["block_size"], spec["tokens_per_step"])
                sync()
                if rep > 0:
                    runs.append(time.perf_counter() - t0)
            sample_s.append([batch, statistics.median(runs)])
        result["timings"] = {"train_step_s": train_s, "sample_s": sample_s, "nfe": nfe, "threads": threads}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
