#!/usr/bin/env python3
"""Train the embedded default model: a tiny DeepSeek-V4 target + DSpark draft on Python's stdlib.

    python tools/train_tiny.py all --out models/pystd-tiny --work /tmp/pystd-tiny

Stages (each resumable; `all` runs them in order and skips what is already done):
  tokenizer  byte-level BPE (`tokenizers`) on the running interpreter's stdlib .py files (no tests,
             no site-packages); whole files split into train / held-out by a hash of the path
  target     the V4 target (every feature on: hash layers, CSA + indexer, HCA, window, MoE with a
             shared expert, mHC), trained through tools/tiny_model.py, which equals the reference
  draft      the DSpark draft against the frozen target (CE + L1 to the target distribution +
             confidence BCE, random anchors, position decay)
  export     DeepSeek's native checkpoint (FP8/UE8M0 dense, FP4 experts, mtp.* stages, dspark_*
             config keys, tokenizer files) through dsv4.testing.fixture's writer, then the held-out
             loss again through the reference loading the exported (quantized) files
Checkpoints (torch.save of weights, optimizer, step, RNG state) go to --work every --save-every
steps and at the end; a killed run continues from the last one.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_model import TrainDraft, TrainTarget, dspark_loss  # noqa: E402

from dsv4.quant import encode_fp4_weight, encode_fp8_weight, f32_to_bf16  # noqa: E402
from dsv4.testing.fixture import (FIXTURE_CONFIG, NOISE_TOKEN_ID, SPECIAL_TOKENS, TensorInit,  # noqa: E402
                                  Tensor, checkpoint_tensors, write_checkpoint, write_tokenizer_config)
from tests.reference.config import Config  # noqa: E402

HELDOUT_PERCENT = 5          # whole files whose path hash falls in this percentile are held out


# ----------------------------------------------------------------------------------------------
# sizes


@dataclass
class Sizes:
    vocab: int = 4096
    dim: int = 256
    window: int = 64
    index_topk: int = 16
    experts: int = 8
    moe_inter: int = 128
    stages: int = 2
    gamma: int = 5
    markov_rank: int = 64
    seq: int = 256
    batch: int = 8
    target_steps: int = 1200
    target_lr: float = 2e-3
    draft_steps: int = 800
    draft_lr: float = 2e-3
    anchors: int = 32            # random anchors per sequence in a draft step
    seed: int = 0
    max_files: int = 0           # 0 = every stdlib file; tests use a few

    def model_config(self, vocab: int) -> dict[str, Any]:
        """The fixture's config shape with this model's sizes (vocab = the trained tokenizer's)."""
        cfg = copy.deepcopy(FIXTURE_CONFIG)
        cfg.update({
            "vocab_size": vocab,
            "hidden_size": self.dim,
            "sliding_window": self.window,
            "compress_ratios": [0, 4, 128, 4, 128, 4] + [0] * self.stages,
            "index_topk": self.index_topk,
            "n_routed_experts": self.experts,
            "moe_intermediate_size": self.moe_inter,
            "dspark_block_size": self.gamma,
            "dspark_markov_rank": self.markov_rank,
            "dspark_target_layer_ids": [3, 4, 5],
            "max_position_embeddings": 4096,
        })
        return cfg


# ----------------------------------------------------------------------------------------------
# data


def stdlib_files() -> tuple[Path, list[Path]]:
    """The interpreter's stdlib .py files in sorted order, without test packages and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "idle_test", "tests", "test"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("test"))
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py") and not f.startswith("test_")]
    return root, sorted(files)


def is_heldout(rel: str) -> bool:
    return int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def stage_tokenizer(work: Path, sizes: Sizes) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root, files = stdlib_files()
    rels = [str(f.relative_to(root)) for f in files]
    train = [f for f, r in zip(files, rels) if not is_heldout(r)]
    held = [f for f, r in zip(files, rels) if is_heldout(r)]
    if sizes.max_files:                       # a quick subset (tests): the first files of each split
        train, held = train[:sizes.max_files], held[:max(1, sizes.max_files // 20)]
    if not train or not held:
        raise ValueError(f"{root}: no stdlib .py files for the train / held-out split")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=sizes.vocab, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((read_text(f) for f in train), trainer)
    tok.save(str(work / "tokenizer.json"))

    def encode(paths: list[Path]) -> np.ndarray:
        # Each file starts with bos (0), so a window may span a file boundary but always sees it.
        ids = []
        for f in paths:
            ids.append(np.array([0] + tok.encode(read_text(f)).ids, dtype=np.int32))
        return np.concatenate(ids)

    np.save(work / "train.npy", encode(train))
    np.save(work / "heldout.npy", encode(held))
    meta = {"python": sys.version.split()[0], "stdlib": str(root), "files_train": len(train),
            "files_heldout": len(held), "heldout_files": [str(f.relative_to(root)) for f in held],
            "vocab": tok.get_vocab_size()}
    (work / "data.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"tokenizer: vocab {tok.get_vocab_size()}, python {meta['python']} stdlib {root}: "
          f"{len(train)} train files ({np.load(work / 'train.npy').size} tokens), "
          f"{len(held)} held-out files ({np.load(work / 'heldout.npy').size} tokens)", flush=True)


def heldout_windows(work: Path, seq: int, n: int) -> torch.Tensor:
    """n fixed non-overlapping windows of seq+1 tokens from the held-out stream, [seq+1, n]."""
    held = np.load(work / "heldout.npy")
    stride = max(seq + 1, (held.size - seq - 1) // n)
    starts = [i * stride for i in range(n) if i * stride + seq + 1 <= held.size]
    return torch.from_numpy(np.stack([held[s:s + seq + 1] for s in starts], axis=1).astype(np.int64))


def unigram_loss(work: Path, vocab: int) -> float:
    """Held-out cross entropy (nats/token) of the train split's add-one unigram distribution."""
    counts = np.bincount(np.load(work / "train.npy"), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.load(work / "heldout.npy")].mean())


# ----------------------------------------------------------------------------------------------
# parameters


class FloatInit(TensorInit):
    """The fixture's seeded initialisation, kept in float32 (nothing quantized) for training."""

    def bf16(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> list[Tensor]:
        return self.f32(name, shape, std, mean)

    def fp8_linear(self, prefix: str, out_f: int, in_f: int) -> list[Tensor]:
        return self.f32(f"{prefix}.weight", (out_f, in_f), in_f ** -0.5)

    def fp4_linear(self, prefix: str, out_f: int, in_f: int) -> list[Tensor]:
        return self.f32(f"{prefix}.weight", (out_f, in_f), in_f ** -0.5)


class TrainedInit(TensorInit):
    """Trained float weights encoded the way the fixture writes them (same names, kinds, order)."""

    def __init__(self, params: dict[str, np.ndarray]):
        self.params = params

    def _get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        a = self.params[name]
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name}: trained shape {a.shape} != checkpoint shape {shape}")
        return a

    def f32(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> list[Tensor]:
        return [(name, "F32", shape, self._get(name, shape).astype(np.float32))]

    def bf16(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> list[Tensor]:
        return [(name, "BF16", shape, f32_to_bf16(self._get(name, shape).astype(np.float32)))]

    def fp8_linear(self, prefix: str, out_f: int, in_f: int) -> list[Tensor]:
        q, s = encode_fp8_weight(self._get(f"{prefix}.weight", (out_f, in_f)).astype(np.float32))
        return [(f"{prefix}.weight", "F8_E4M3", q.shape, q), (f"{prefix}.scale", "F8_E8M0", s.shape, s)]

    def fp4_linear(self, prefix: str, out_f: int, in_f: int) -> list[Tensor]:
        q, s = encode_fp4_weight(self._get(f"{prefix}.weight", (out_f, in_f)).astype(np.float32))
        return [(f"{prefix}.weight", "I8", q.shape, q), (f"{prefix}.scale", "F8_E8M0", s.shape, s)]

    def tid2eid(self, name: str, vocab: int, n_exp: int, top_k: int) -> list[Tensor]:
        return [(name, "I64", (vocab, top_k), self._get(name, (vocab, top_k)).astype(np.int64))]


def init_params(cfg: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(arr)) for _, (name, _, _, arr) in
            checkpoint_tensors(cfg, seed, FloatInit(seed))}


def trainable(name: str, params: dict[str, torch.Tensor]) -> bool:
    # gate.bias is the aux-loss-free balancing bias (selection only, updated by load, not by grads)
    return params[name].is_floating_point() and not name.endswith("gate.bias")


# ----------------------------------------------------------------------------------------------
# training loop (shared by target and draft)


@dataclass
class RunState:
    step: int
    tokens_seen: int
    seconds: float


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(params: dict[str, torch.Tensor], names: list[str], lr: float) -> torch.optim.Optimizer:
    decay = [params[n] for n in names if params[n].dim() >= 2]
    other = [params[n] for n in names if params[n].dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def save_state(path: Path, params: dict[str, torch.Tensor], opt: torch.optim.Optimizer, st: RunState,
               gen: torch.Generator) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"params": params, "opt": opt.state_dict(), "state": asdict(st), "gen": gen.get_state()}, tmp)
    os.replace(tmp, path)


def train_loop(name: str, work: Path, params: dict[str, torch.Tensor], names: list[str], total: int,
               peak_lr: float, step_fn: Callable[[torch.Generator], tuple[torch.Tensor, int, str]],
               eval_fn: Callable[[], str], after_step: Callable[[], None], seed: int,
               save_every: int, eval_every: int) -> RunState:
    """Generic resumable AdamW loop; `step_fn(gen)` returns (loss, tokens, log text)."""
    ckpt = work / f"{name}.pt"
    for n in names:
        params[n].requires_grad_(True)
    opt = make_optimizer(params, names, peak_lr)
    gen = torch.Generator().manual_seed(seed)
    st = RunState(0, 0, 0.0)
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        with torch.no_grad():
            for k, v in saved["params"].items():
                params[k].copy_(v)
        opt.load_state_dict(saved["opt"])
        st = RunState(**saved["state"])
        gen.set_state(saved["gen"])
        print(f"{name}: resumed at step {st.step} ({st.seconds:.0f} s so far)", flush=True)
    log = open(work / f"{name}.log", "a")
    while st.step < total:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(st.step, total, peak_lr)
        loss, ntok, text = step_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([params[n] for n in names], 1.0)
        opt.step()
        after_step()
        st.step += 1
        st.tokens_seen += ntok
        st.seconds += time.perf_counter() - t0
        line = f"{name} step {st.step}/{total} {text} lr {opt.param_groups[0]['lr']:.2e} {st.seconds:.0f}s"
        if st.step % 10 == 0 or st.step == total:
            print(line, flush=True)
        log.write(line + "\n")
        if st.step % eval_every == 0 or st.step == total:
            msg = f"{name} eval step {st.step}: {eval_fn()} tokens seen {st.tokens_seen}"
            print(msg, flush=True)
            log.write(msg + "\n")
        if st.step % save_every == 0 or st.step == total:
            save_state(ckpt, params, opt, st, gen)
        log.flush()
    for n in names:
        params[n].requires_grad_(False)
    return st


def load_config(work: Path) -> tuple[dict[str, Any], Config]:
    cfg = json.loads((work / "config.json").read_text())
    return cfg, Config.from_dict(cfg)


def load_params(work: Path, cfg: dict[str, Any], sizes: Sizes) -> dict[str, torch.Tensor]:
    """Initial weights, overwritten by the latest target / draft checkpoints that exist."""
    params = init_params(cfg, sizes.seed)
    for stage in ("target", "draft"):
        if (work / f"{stage}.pt").exists():
            saved = torch.load(work / f"{stage}.pt", weights_only=False)["params"]
            for k, v in saved.items():
                params[k] = v.detach().clone()
    return params


def sample_batch(train: np.ndarray, seq: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, train.size - seq - 1, (batch,), generator=gen).tolist()
    return torch.from_numpy(np.stack([train[s:s + seq + 1] for s in starts], axis=1).astype(np.int64))


def heldout_loss(target: TrainTarget, windows: torch.Tensor, chunk: int = 8) -> float:
    """Mean next-token cross entropy (nats) over every position of the held-out windows."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, windows.shape[1], chunk):
            w = windows[:, i:i + chunk]
            logits = target.forward(w[:-1]).logits
            total += float(F.cross_entropy(logits.flatten(0, 1), w[1:].reshape(-1), reduction="sum"))
            count += w[1:].numel()
    return total / count


class Balancer:
    """Aux-loss-free load balancing (DeepSeek-V3): after each step the selection bias of every
    non-hash MoE moves by `rate` towards under-loaded experts. The counts come from wrapping each
    MoE's route() (the reference's own routing code)."""

    def __init__(self, blocks: list, n_experts: int, rate: float = 1e-3):
        self.counts: dict[int, torch.Tensor] = {}
        self.moes = [b.moe for b in blocks if b.moe.bias is not None]
        self.n, self.rate = n_experts, rate
        for m in self.moes:
            route = m.route

            def counted(x: torch.Tensor, tokens: torch.Tensor, route=route, key=id(m)):
                idx, w = route(x, tokens)
                self.counts[key] = self.counts.get(key, 0) + torch.bincount(idx.flatten(), minlength=self.n)
                return idx, w
            m.route = counted

    def update(self) -> None:
        with torch.no_grad():
            for m in self.moes:
                c = self.counts.pop(id(m), None)
                if c is not None:
                    m.bias += self.rate * torch.sign(c.float().mean() - c.float())

    def clear(self) -> None:
        self.counts.clear()


# ----------------------------------------------------------------------------------------------
# stages


def stage_target(work: Path, sizes: Sizes, save_every: int, eval_every: int) -> None:
    cfg_dict, cfg = load_config(work)
    params = load_params(work, cfg_dict, sizes)
    target = TrainTarget(params, cfg)
    balancer = Balancer(target.blocks, cfg.n_routed_experts)
    train = np.load(work / "train.npy")
    windows = heldout_windows(work, sizes.seq, 32)
    names = [n for n in params if not n.startswith("mtp.") and trainable(n, params)]
    print(f"target: {sum(params[n].numel() for n in names)} trained parameters "
          f"({sum(v.numel() for k, v in params.items() if not k.startswith('mtp.'))} in the trunk incl. ids/bias), "
          f"unigram baseline {unigram_loss(work, cfg.vocab_size):.4f} nats", flush=True)

    def step(gen: torch.Generator) -> tuple[torch.Tensor, int, str]:
        batch = sample_batch(train, sizes.seq, sizes.batch, gen)
        out = target.forward(batch[:-1])
        ce = F.cross_entropy(out.logits.flatten(0, 1), batch[1:].reshape(-1))
        return ce + 0.1 * out.index_loss, batch[1:].numel(), f"ce {ce.item():.4f} idx {out.index_loss.item():.4f}"

    def evaluate() -> str:
        balancer.clear()
        loss = heldout_loss(target, windows)
        balancer.clear()
        return f"held-out ce {loss:.4f}"

    st = train_loop("target", work, params, names, sizes.target_steps, sizes.target_lr, step, evaluate,
                    balancer.update, sizes.seed + 1, save_every, eval_every)
    print(f"target done: {st.step} steps, {st.tokens_seen} tokens, {st.seconds:.0f} s", flush=True)


def draft_batch(target: TrainTarget, batch: torch.Tensor, n_anchors: int, gamma: int,
                gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Frozen-target pass + random anchors: (features, anchors, seq, prev, labels, target logits)."""
    S, B = batch.shape
    with torch.no_grad():
        out = target.forward(batch)
    # Anchor A in 1 .. S-1-γ: at least one committed token of context, and γ labels A+1..A+γ.
    anchors = torch.stack([torch.randperm(S - 1 - gamma, generator=gen)[:n_anchors] + 1 for _ in range(B)], 1)
    seq = torch.arange(B)[None, :].expand_as(anchors)
    anchors, seq = anchors.reshape(-1), seq.reshape(-1)
    k = torch.arange(gamma)[:, None]
    prev = batch[anchors[None, :] + k, seq[None, :]]             # [γ, N]: anchor, then true tokens
    labels = batch[anchors[None, :] + k + 1, seq[None, :]]
    tlogits = out.logits[anchors[None, :] + k, seq[None, :]]     # target's distribution for A+k+1
    return out.features, anchors, seq, prev, labels, tlogits


def stage_draft(work: Path, sizes: Sizes, save_every: int, eval_every: int) -> None:
    cfg_dict, cfg = load_config(work)
    params = load_params(work, cfg_dict, sizes)
    target = TrainTarget(params, cfg)
    draft = TrainDraft(params, cfg)
    train = np.load(work / "train.npy")
    names = [n for n in params if n.startswith("mtp.") and trainable(n, params)]
    print(f"draft: {len(cfg.compress_ratios) - cfg.n_layers} stages, γ {cfg.dspark_block_size}, "
          f"{sum(params[n].numel() for n in names)} trained parameters", flush=True)
    held = heldout_windows(work, sizes.seq, 8)
    eval_gen = torch.Generator().manual_seed(1234)
    eval_sets = [draft_batch(target, held[:-1, i:i + 4], sizes.anchors, cfg.dspark_block_size, eval_gen)
                 for i in range(0, held.shape[1], 4)]

    def run(data: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        feats, anchors, seq, prev, labels, tlogits = data
        out = draft.forward(feats, anchors, seq, prev[0], params["head.weight"], params["embed.weight"])
        return dspark_loss(draft, out, prev, labels, tlogits)

    def step(gen: torch.Generator) -> tuple[torch.Tensor, int, str]:
        batch = sample_batch(train, sizes.seq, sizes.batch, gen)[:-1]
        r = run(draft_batch(target, batch, sizes.anchors, cfg.dspark_block_size, gen))
        match = " ".join(f"{m:.2f}" for m in r["match"].tolist())
        return r["loss"], batch.numel(), (f"loss {r['loss'].item():.4f} ce {r['ce'].item():.3f} "
                                          f"l1 {r['l1'].item():.3f} bce {r['bce'].item():.3f} match {match}")

    def evaluate() -> str:
        with torch.no_grad():
            rs = [run(d) for d in eval_sets]
        match = torch.stack([r["match"] for r in rs]).mean(0)
        # Expected greedy block acceptance if the slots were independent: sum_k prod_{i<=k} match_i.
        tau = 1.0 + float(torch.cumprod(match, 0).sum())
        return (f"held-out loss {np.mean([r['loss'].item() for r in rs]):.4f} match by slot "
                f"{' '.join(f'{m:.3f}' for m in match.tolist())} (teacher-forced tau estimate {tau:.2f})")

    st = train_loop("draft", work, params, names, sizes.draft_steps, sizes.draft_lr, step, evaluate,
                    lambda: None, sizes.seed + 2, save_every, eval_every)
    print(f"draft done: {st.step} steps, {st.tokens_seen} tokens of context, {st.seconds:.0f} s", flush=True)


def held_out_prompts(work: Path, n: int = 8, before: int = 12, after: int = 2) -> list[dict[str, Any]]:
    """Code prompts from held-out files: the `before` lines above a file's first `def` line at
    least `before` lines in, the def line and `after` - 1 more lines (so the model writes a body).
    Deterministic: held-out files in path order, one prompt per file."""
    from tokenizers import Tokenizer

    meta = json.loads((work / "data.json").read_text())
    tok = Tokenizer.from_file(str(work / "tokenizer.json"))
    root = Path(meta["stdlib"])
    prompts = []
    for rel in meta["heldout_files"]:
        lines = read_text(root / rel).split("\n")
        for i in range(before, len(lines) - after):
            if lines[i].lstrip().startswith("def "):
                text = "\n".join(lines[i - before:i + after]) + "\n"
                if 200 <= len(text) <= 1500:
                    prompts.append({"source": rel, "text": text, "ids": [0] + tok.encode(text).ids})
                break
        if len(prompts) == n:
            break
    return prompts


def write_prompts(work: Path, out: Path) -> None:
    """prompts.json (source, text, token ids with bos) next to the exported checkpoint."""
    doc = {"about": "held-out prompts (stdlib files never trained on), written by tools/train_tiny.py",
           "prompts": held_out_prompts(work)}
    (out / "prompts.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def stage_export(work: Path, out: Path, sizes: Sizes) -> None:
    from tests.reference.weights import load_checkpoint

    cfg_dict, cfg = load_config(work)
    params = load_params(work, cfg_dict, sizes)
    arrays = {k: v.detach().numpy() for k, v in params.items()}
    if out.exists():
        shutil.rmtree(out)
    write_checkpoint(out, cfg_dict, checkpoint_tensors(cfg_dict, sizes.seed, TrainedInit(arrays)), shards=1)
    shutil.copy(work / "tokenizer.json", out / "tokenizer.json")
    write_tokenizer_config(out)
    write_prompts(work, out)
    windows = heldout_windows(work, sizes.seq, 32)
    before = heldout_loss(TrainTarget(params, cfg), windows)
    exported = load_checkpoint(out)
    after = heldout_loss(TrainTarget(exported.tensors, exported.config), windows)
    size = sum(f.stat().st_size for f in out.iterdir())
    result = {"heldout_ce_float": before, "heldout_ce_exported": after,
              "unigram_ce": unigram_loss(work, cfg.vocab_size), "export_bytes": size}
    (work / "export.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"export: {out} ({size / 1e6:.2f} MB); held-out ce float {before:.4f}, exported (FP8/FP4) {after:.4f}, "
          f"unigram {result['unigram_ce']:.4f} nats/token", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["tokenizer", "target", "draft", "export", "all"])
    ap.add_argument("--out", type=Path, default=Path("models/pystd-tiny"))
    ap.add_argument("--work", type=Path, required=True, help="scratch dir: data, checkpoints, logs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=200)
    for f, v in asdict(Sizes()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    args = ap.parse_args(argv)
    sizes = Sizes(**{f: getattr(args, f) for f in asdict(Sizes())})
    torch.set_num_threads(args.threads)
    torch.manual_seed(sizes.seed)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "sizes.json").write_text(json.dumps(asdict(sizes), indent=1) + "\n")
    stages = ["tokenizer", "target", "draft", "export"] if args.stage == "all" else [args.stage]
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "tokenizer":
            if args.stage == "all" and (work / "data.json").exists():
                continue
            stage_tokenizer(work, sizes)
            vocab = json.loads((work / "data.json").read_text())["vocab"]
            cfg = sizes.model_config(vocab)
            if cfg["dspark_noise_token_id"] != NOISE_TOKEN_ID:
                raise ValueError("noise token id mismatch")
            (work / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        elif stage == "target":
            stage_target(work, sizes, args.save_every, args.eval_every)
        elif stage == "draft":
            stage_draft(work, sizes, args.save_every, args.eval_every)
        else:
            stage_export(work, args.out, sizes)
        print(f"stage {stage}: {time.perf_counter() - t0:.0f} s wall", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
