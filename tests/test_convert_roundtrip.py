"""dsv4 convert, round trip: every tensor read back from the GGUF equals the checkpoint's value.

FP8 stays bit-exact (e4m3 bytes + decoded scales), FP4 -> MXFP4 is bit-exact, BF16/F32 exact;
Q8_0 equals quant.quantize_q8_0 of the checkpoint's decoded FP8 values byte for byte, and BF16
re-encoding of FP8 is exact. The GGUF name of each checkpoint tensor is derived here from the
layout notes (gguf-layout.md), independently of convert/arch.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from dsv4.convert.safetensors import SafetensorsFile  # noqa: E402
from dsv4.quant import (bf16_to_f32, decode_fp4_weight, decode_fp8_weight, decode_mxfp4,  # noqa: E402
                        f32_to_bf16, fp4_to_mxfp4, quantize_q8_0, ue8m0_to_f32)

# checkpoint suffix (within layers.N. / mtp.S.) -> GGUF suffix (within blk.M.)
BLOCK_NAMES = {
    "hc_attn_fn": "hc_attn_fn.weight", "hc_attn_base": "hc_attn_base.weight", "hc_attn_scale": "hc_attn_scale.weight",
    "hc_ffn_fn": "hc_ffn_fn.weight", "hc_ffn_base": "hc_ffn_base.weight", "hc_ffn_scale": "hc_ffn_scale.weight",
    "attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
    "attn.attn_sink": "attn_sinks.weight", "attn.wq_a": "attn_q_a", "attn.q_norm.weight": "attn_q_a_norm.weight",
    "attn.wq_b": "attn_q_b", "attn.wkv": "attn_kv", "attn.kv_norm.weight": "attn_kv_a_norm.weight",
    "attn.wo_a": "attn_output_a", "attn.wo_b": "attn_output_b",
    "attn.compressor.ape": "attn_compressor_ape.weight", "attn.compressor.wkv.weight": "attn_compressor_kv.weight",
    "attn.compressor.wgate.weight": "attn_compressor_gate.weight", "attn.compressor.norm.weight": "attn_compressor_norm.weight",
    "attn.indexer.wq_b": "indexer.attn_q_b", "attn.indexer.weights_proj.weight": "indexer.proj.weight",
    "attn.indexer.compressor.ape": "indexer_compressor_ape.weight",
    "attn.indexer.compressor.wkv.weight": "indexer_compressor_kv.weight",
    "attn.indexer.compressor.wgate.weight": "indexer_compressor_gate.weight",
    "attn.indexer.compressor.norm.weight": "indexer_compressor_norm.weight",
    "ffn.gate.weight": "ffn_gate_inp.weight", "ffn.gate.bias": "exp_probs_b.bias",
    "ffn.gate.tid2eid": "ffn_gate_tid2eid.weight",
    "ffn.shared_experts.w1": "ffn_gate_shexp", "ffn.shared_experts.w2": "ffn_down_shexp",
    "ffn.shared_experts.w3": "ffn_up_shexp",
}
EXPERT_NAMES = {"w1": "ffn_gate_exps", "w2": "ffn_down_exps", "w3": "ffn_up_exps"}
GLOBAL_NAMES = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight", "head.weight": "output.weight",
                "hc_head_fn": "output_hc_fn.weight", "hc_head_base": "output_hc_base.weight",
                "hc_head_scale": "output_hc_scale.weight"}
# DSpark heads: (dsv4 name, llama.cpp sidecar name)
HEAD_NAMES = {"main_proj": ("dspark.fc", "fc"), "main_norm.weight": ("dspark.fc_norm.weight", "enc.output_norm.weight"),
              "norm.weight": ("dspark.output_norm.weight", "output_norm.weight"),
              "hc_head_fn": ("dspark.output_hc_fn.weight", "output_hc_fn.weight"),
              "hc_head_base": ("dspark.output_hc_base.weight", "output_hc_base.weight"),
              "hc_head_scale": ("dspark.output_hc_scale.weight", "output_hc_scale.weight"),
              "markov_head.markov_w1.weight": ("dspark.markov_w1.weight", "markov_w1.weight"),
              "markov_head.markov_w2.weight": ("dspark.markov_w2.weight", "markov_w2.weight"),
              "confidence_head.proj.weight": ("dspark.conf_proj.weight", "conf_proj.weight")}


class Ckpt:
    def __init__(self, d: Path):
        self.cfg = json.loads((d / "config.json").read_text())
        self.files = [SafetensorsFile(p) for p in sorted(d.glob("*.safetensors"))]
        self.where = {n: f for f in self.files for n in f.names()}

    def arr(self, name: str) -> np.ndarray:
        return self.where[name].array(name)

    def dtype(self, name: str) -> str:
        return self.where[name].info(name).dtype

    def close(self) -> None:
        for f in self.files:
            f.close()


@pytest.fixture(scope="module")
def ckpt(convert_checkpoint: Path):
    c = Ckpt(convert_checkpoint)
    yield c
    c.close()


def expected_sources(c: Ckpt, layout: str, draft: bool = True) -> dict[str, dict[str, tuple]]:
    """{file role: {GGUF base name: ("fp8", w, s) | ("experts", [(w, s)...]) | ("plain", name)}}."""
    n_layer = c.cfg["num_hidden_layers"]
    target: dict[str, tuple] = {}
    side: dict[str, tuple] = {}
    experts: dict[str, list] = {}
    for name in c.where:
        if name in GLOBAL_NAMES:
            target[GLOBAL_NAMES[name]] = ("plain", name)
            continue
        m = re.match(r"(layers|mtp)\.(\d+)\.(.+)$", name)
        assert m, name
        group, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if group == "mtp" and not draft:
            continue
        dest = target if group == "layers" or layout == "dsv4" else side
        blk = idx if group == "layers" else (n_layer + idx if layout == "dsv4" else idx)
        base_rest = rest.removesuffix(".weight").removesuffix(".scale")
        if group == "mtp" and (rest in HEAD_NAMES or base_rest in HEAD_NAMES):
            key = rest if rest in HEAD_NAMES else base_rest
            gname = HEAD_NAMES[key][0 if layout == "dsv4" else 1]
            if key == "main_proj":
                dest[gname] = ("fp8", f"mtp.{idx}.main_proj.weight", f"mtp.{idx}.main_proj.scale")
            else:
                dest[gname] = ("plain", name)
            continue
        me = re.match(r"ffn\.experts\.(\d+)\.(w[123])\.(weight|scale)$", rest)
        if me:
            gname = f"blk.{blk}.{EXPERT_NAMES[me.group(2)]}.weight"
            lst = experts.setdefault(f"{group}:{gname}", [])
            if me.group(3) == "weight":
                lst.append((int(me.group(1)), name, name.removesuffix(".weight") + ".scale"))
                dest[gname] = ("experts", lst)
            continue
        if rest.endswith(".scale"):
            continue
        if base_rest in BLOCK_NAMES and rest.endswith(".weight") and c.dtype(name) == "F8_E4M3":
            dest[f"blk.{blk}.{BLOCK_NAMES[base_rest]}"] = ("fp8", name, name.removesuffix(".weight") + ".scale")
        else:
            dest[f"blk.{blk}.{BLOCK_NAMES[rest]}"] = ("plain", name)
    for lst in experts.values():
        lst.sort()
    return {"target": target, "draft": side}


def gguf_tensors(path: Path) -> dict[str, object]:
    r = gguf.GGUFReader(str(path))
    return {t.name: t for t in r.tensors}


def raw_bytes(t) -> np.ndarray:
    return np.asarray(t.data).view(np.uint8).reshape(-1)


def logical_shape(t) -> tuple[int, ...]:
    return tuple(int(x) for x in reversed(t.shape))


def fields(path: Path) -> dict[str, object]:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def check_file(c: Ckpt, path: Path, expect: dict[str, tuple], *, fp8_as: str, norms_f32: bool) -> None:
    """Every expected tensor is there with the right type, shape, size and (decoded) value."""
    tensors = gguf_tensors(path)
    want_names = set()
    for base, src in expect.items():
        if src[0] == "fp8":
            want_names.add(base + ".weight" if not base.endswith(".weight") else base)
            if fp8_as == "fp8":
                want_names.add((base.removesuffix(".weight")) + ".scale")
        else:
            want_names.add(base)
    assert set(tensors) == want_names

    for base, src in expect.items():
        if src[0] == "fp8":
            _, wname, sname = src
            w, s = c.arr(wname), c.arr(sname)
            ref = decode_fp8_weight(w, s)
            t = tensors[base if base.endswith(".weight") else base + ".weight"]
            assert logical_shape(t) == w.shape
            if fp8_as == "fp8":
                assert t.tensor_type == gguf.GGMLQuantizationType.I8
                assert np.array_equal(raw_bytes(t), w.reshape(-1))  # the e4m3 bytes, unchanged
                ts = tensors[base.removesuffix(".weight") + ".scale"]
                assert ts.tensor_type == gguf.GGMLQuantizationType.F32 and logical_shape(ts) == s.shape
                scale = raw_bytes(ts).view(np.float32).reshape(s.shape)
                assert bits_equal(scale, ue8m0_to_f32(s))
                assert bits_equal(decode_fp8_weight(raw_bytes(t).reshape(w.shape), scale), ref)
            elif fp8_as == "q8_0" and w.shape[1] % 32 == 0:
                assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
                assert np.array_equal(raw_bytes(t), quantize_q8_0(ref).reshape(-1))
            else:  # bf16 (asked for, or the Q8_0 fallback for rows that are not whole blocks)
                assert t.tensor_type == gguf.GGMLQuantizationType.BF16
                bits = raw_bytes(t).view(np.uint16).reshape(w.shape)
                assert np.array_equal(bits, f32_to_bf16(ref))
                assert bits_equal(bf16_to_f32(bits), ref)  # FP8 values are exact in bf16
        elif src[0] == "experts":
            t = tensors[base]
            lst = src[1]
            w0 = c.arr(lst[0][1])
            rows, cols = w0.shape[0], w0.shape[1] * 2
            assert t.tensor_type == gguf.GGMLQuantizationType.MXFP4
            assert logical_shape(t) == (len(lst), rows, cols)
            blocks = raw_bytes(t).reshape(len(lst), rows, cols // 32 * 17)
            for e, wname, sname in lst:
                w, s = c.arr(wname), c.arr(sname)
                assert np.array_equal(blocks[e], fp4_to_mxfp4(w, s))
                # Equal values; ggml's table decodes the E2M1 code for -0 as +0, so compare values.
                assert np.array_equal(decode_mxfp4(blocks[e]), decode_fp4_weight(w, s))
        else:
            name = src[1]
            a = c.arr(name)
            t = tensors[base]
            dt = c.dtype(name)
            assert logical_shape(t) == a.shape, base
            if dt == "I64":
                assert t.tensor_type == gguf.GGMLQuantizationType.I32
                assert np.array_equal(raw_bytes(t).view(np.int32).reshape(a.shape), a)
            elif dt == "F32":
                assert t.tensor_type == gguf.GGMLQuantizationType.F32
                assert bits_equal(raw_bytes(t).view(np.float32).reshape(a.shape), a)
            elif norms_f32 and (a.ndim == 1 or base.endswith("_norm.weight")):
                assert t.tensor_type == gguf.GGMLQuantizationType.F32, base
                assert bits_equal(raw_bytes(t).view(np.float32).reshape(a.shape), bf16_to_f32(a))
            else:
                assert t.tensor_type == gguf.GGMLQuantizationType.BF16, base
                assert np.array_equal(raw_bytes(t).view(np.uint16).reshape(a.shape), a)


def check_sizes(path: Path) -> None:
    """gguf-py opens the file and each tensor's bytes match its type and shape."""
    r = gguf.GGUFReader(str(path))
    for t in r.tensors:
        block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        shape = logical_shape(t)
        assert t.n_elements == int(np.prod(shape))
        assert shape[-1] % block == 0
        assert t.n_bytes == t.n_elements // block * size == raw_bytes(t).size, t.name


@pytest.mark.parametrize("outtype", [None, "q8_0", "bf16"])
def test_dsv4_layout_round_trips_every_tensor(ckpt, converted, outtype):
    path = converted(outtype=outtype)
    check_sizes(path)
    check_file(ckpt, path, expected_sources(ckpt, "dsv4")["target"], fp8_as=outtype or "fp8", norms_f32=False)


@pytest.mark.parametrize("outtype", [None, "bf16"])
def test_llama_cpp_layout_round_trips_target_and_sidecar(ckpt, converted, outtype):
    path = converted(llama_cpp=True, outtype=outtype)
    side = path.with_name("mtp-" + path.name)
    assert side.exists()
    exp = expected_sources(ckpt, "llama")
    for p, which in ((path, "target"), (side, "draft")):
        check_sizes(p)
        check_file(ckpt, p, exp[which], fp8_as=outtype or "q8_0", norms_f32=True)


def test_no_draft_drops_stages_heads_and_keys(ckpt, converted):
    path = converted(draft=False)
    check_file(ckpt, path, expected_sources(ckpt, "dsv4", draft=False)["target"], fp8_as="fp8", norms_f32=False)
    kv = fields(path)
    assert not any(k.startswith("dsv4.dspark.") for k in kv)
    assert len(kv["dsv4.swiglu_clamp_exp"]) == ckpt.cfg["num_hidden_layers"]
    lc = converted(llama_cpp=True, draft=False)
    assert not lc.with_name("mtp-" + lc.name).exists()


def test_dsv4_keys(ckpt, converted):
    cfg = ckpt.cfg
    kv = fields(converted())
    n = cfg["num_hidden_layers"]
    assert kv["general.architecture"] == "dsv4"
    assert kv["dsv4.block_count"] == n
    assert kv["dsv4.attention.compress_ratios"] == cfg["compress_ratios"][:n]  # target layers only
    assert kv["dsv4.swiglu_clamp_exp"] == [cfg["swiglu_limit"]] * (n + 3)    # one per block in the file
    assert kv["dsv4.expert_gating_func"] == 4
    assert kv["dsv4.embedding_length_out"] == cfg["hidden_size"] * cfg["hc_mult"]
    assert kv["dsv4.fp8.format"] == "e4m3fn" and kv["dsv4.fp8.block"] == [128, 128]
    assert kv["dsv4.dspark.stage_count"] == 3
    assert kv["dsv4.dspark.target_layer_ids"] == cfg["dspark_target_layer_ids"]
    assert kv["dsv4.dspark.target_tap"] == "layer_output"
    assert kv["dsv4.dspark.noise_token_id"] == cfg["dspark_noise_token_id"]
    assert kv["dsv4.dspark.sample_from_anchor"] is True
    assert kv["dsv4.dspark.has_confidence_head"] is True
    assert kv["dsv4.rope.scaling.type"] == "yarn" and kv["dsv4.rope.scaling.factor"] == 16.0
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "deepseek-v3"
    assert kv["tokenizer.huggingface.json"] == (Path(ckpt.files[0].path).parent / "tokenizer.json").read_text()
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"]) == (0, 1)
    assert len(kv["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert "dsv4.fp8.format" not in fields(converted(outtype="q8_0"))


def test_tokens_and_merges_match_tokenizer_json(ckpt, converted, convert_checkpoint):
    tok = json.loads((convert_checkpoint / "tokenizer.json").read_text())
    kv = fields(converted())
    tokens = kv["tokenizer.ggml.tokens"]
    for text, idx in tok["model"]["vocab"].items():
        assert tokens[idx] == text
    types = kv["tokenizer.ggml.token_type"]
    for added in tok["added_tokens"]:
        assert tokens[added["id"]] == added["content"] and types[added["id"]] == 3  # CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    assert kv["tokenizer.ggml.merges"] == merges


# Keys upstream's loader requires (llama-model.cpp, models/deepseek4.cpp, models/dflash.cpp).
UPSTREAM_REQUIRED = ["context_length", "embedding_length", "block_count", "attention.layer_norm_rms_epsilon",
                     "attention.q_lora_rank", "attention.sliding_window", "expert_feed_forward_length",
                     "expert_shared_count", "expert_weights_scale", "expert_weights_norm", "swiglu_clamp_exp",
                     "attention.output_group_count", "attention.output_lora_rank",
                     "hyper_connection.count", "hyper_connection.sinkhorn_iterations", "hyper_connection.epsilon",
                     "expert_gating_func"]
DEEPSEEK4_REQUIRED = UPSTREAM_REQUIRED + ["attention.indexer.head_count", "attention.indexer.key_length",
                                          "attention.indexer.top_k", "attention.compress_rope_freq_base",
                                          "hash_layer_count", "attention.compress_ratios"]


def test_llama_cpp_keys_are_upstreams(ckpt, converted):
    cfg = ckpt.cfg
    path = converted(llama_cpp=True)
    kv = fields(path)
    side = fields(path.with_name("mtp-" + path.name))
    assert kv["general.architecture"] == "deepseek4" and side["general.architecture"] == "dflash"
    for k in DEEPSEEK4_REQUIRED:
        assert f"deepseek4.{k}" in kv, k
    for k in UPSTREAM_REQUIRED + ["target_layers"]:
        assert f"dflash.{k}" in side, k
    assert kv["deepseek4.attention.compress_ratios"] == cfg["compress_ratios"]  # as upstream: config's list
    assert kv["deepseek4.block_count"] == cfg["num_hidden_layers"]
    assert kv["general.file_type"] == 38 and side["general.file_type"] == 38  # MOSTLY_MXFP4_MOE
    assert not any(k.startswith("deepseek4.dspark") or k.startswith("deepseek4.fp8") for k in kv)
    assert side["dflash.block_count"] == 3
    assert side["dflash.target_layers"] == [i + 1 for i in cfg["dspark_target_layer_ids"]]
    assert side["dflash.block_size"] == cfg["dspark_block_size"]
    assert side["dflash.attention.compress_ratios"] == [0, 0, 0]
    assert side["dflash.hash_layer_count"] == 0
    assert "dflash.embedding_length_out" not in side
    assert side["tokenizer.ggml.mask_token_id"] == cfg["dspark_noise_token_id"]
    assert "tokenizer.huggingface.json" not in kv and "tokenizer.huggingface.json" not in side


def upstream_tensor_shapes(cfg: dict, layout: str) -> dict[str, tuple]:
    """name -> ne (GGUF order) as llama.cpp's loaders create them (deepseek4.cpp / dflash.cpp)."""
    d, V, hc, H, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["hc_mult"], cfg["num_attention_heads"], cfg["head_dim"]
    q, g, ol, E, I = cfg["q_lora_rank"], cfg["o_groups"], cfg["o_lora_rank"], cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    k, Hi, Di, r = cfg["num_experts_per_tok"], cfg["index_n_heads"], cfg["index_head_dim"], cfg["dspark_markov_rank"]
    mix = (2 + hc) * hc
    out = {"output_norm.weight": (d,), "output_hc_fn.weight": (hc * d, hc), "output_hc_base.weight": (hc,),
           "output_hc_scale.weight": (1,)}
    n_layer = cfg["num_hidden_layers"]
    if layout == "deepseek4":
        out.update({"token_embd.weight": (d, V), "output.weight": (d, V)})
        blocks = [(i, cfg["compress_ratios"][i], i < cfg["num_hash_layers"]) for i in range(n_layer)]
    else:
        taps = len(cfg["dspark_target_layer_ids"])
        out.update({"fc.weight": (taps * d, d), "enc.output_norm.weight": (d,), "markov_w1.weight": (r, V),
                    "markov_w2.weight": (r, V), "conf_proj.weight": (d + r, 1)})
        blocks = [(s, 0, False) for s in range(len(cfg["compress_ratios"]) - n_layer)]
    for i, ratio, hashed in blocks:
        b = f"blk.{i}."
        out.update({b + "attn_norm.weight": (d,), b + "attn_sinks.weight": (H,), b + "attn_q_a.weight": (d, q),
                    b + "attn_q_a_norm.weight": (q,), b + "attn_q_b.weight": (q, H * hd), b + "attn_kv.weight": (d, hd),
                    b + "attn_kv_a_norm.weight": (hd,), b + "attn_output_a.weight": (H * hd // g, g * ol),  # reshaped on load
                    b + "attn_output_b.weight": (g * ol, d)})
        for part in ("attn", "ffn"):
            out.update({b + f"hc_{part}_fn.weight": (hc * d, mix), b + f"hc_{part}_base.weight": (mix,),
                        b + f"hc_{part}_scale.weight": (3,)})
        if ratio:
            coff = 2 if ratio == 4 else 1
            out.update({b + "attn_compressor_kv.weight": (d, coff * hd), b + "attn_compressor_gate.weight": (d, coff * hd),
                        b + "attn_compressor_ape.weight": (coff * hd, ratio), b + "attn_compressor_norm.weight": (hd,)})
        if ratio == 4:
            out.update({b + "indexer.proj.weight": (d, Hi), b + "indexer.attn_q_b.weight": (q, Hi * Di),
                        b + "indexer_compressor_kv.weight": (d, 2 * Di), b + "indexer_compressor_gate.weight": (d, 2 * Di),
                        b + "indexer_compressor_ape.weight": (2 * Di, ratio), b + "indexer_compressor_norm.weight": (Di,)})
        out[b + "ffn_gate_inp.weight"] = (d, E)
        if hashed:
            out[b + "ffn_gate_tid2eid.weight"] = (k, V)
        else:
            out[b + "exp_probs_b.bias"] = (E,)
        out.update({b + "ffn_norm.weight": (d,), b + "ffn_gate_exps.weight": (d, I, E), b + "ffn_down_exps.weight": (I, d, E),
                    b + "ffn_up_exps.weight": (d, I, E), b + "ffn_gate_shexp.weight": (d, I), b + "ffn_down_shexp.weight": (I, d),
                    b + "ffn_up_shexp.weight": (d, I)})
    return out


def test_llama_cpp_tensors_are_what_upstreams_loader_creates(ckpt, converted):
    path = converted(llama_cpp=True)
    for p, layout in ((path, "deepseek4"), (path.with_name("mtp-" + path.name), "dflash")):
        got = {name: tuple(int(x) for x in t.shape) for name, t in gguf_tensors(p).items()}
        assert got == upstream_tensor_shapes(ckpt.cfg, layout)


def test_q8_0_falls_back_to_bf16_for_rows_not_whole_blocks(tmp_path):
    from dsv4.convert.main import convert
    from dsv4.testing.fixture import make_fixture

    ck = make_fixture(tmp_path / "ck", seed=3, shards=1, q_lora_rank=208)  # 208 % 32 = 16
    notes: list[str] = []
    res = convert(ck, tmp_path / "o.gguf", outtype="q8_0", log=notes.append)
    c = Ckpt(ck)
    try:
        check_sizes(res.outputs[0])
        check_file(c, res.outputs[0], expected_sources(c, "dsv4")["target"], fp8_as="q8_0", norms_f32=False)
        t = gguf_tensors(res.outputs[0])
        assert t["blk.0.attn_q_b.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
        assert t["blk.0.attn_q_a.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
        assert any("blk.0.attn_q_b.weight" in n and "BF16" in n for n in notes)
    finally:
        c.close()


def test_single_safetensors_file_without_index(tmp_path, ckpt):
    from dsv4.convert.main import convert
    from dsv4.testing.fixture import make_fixture

    ck = make_fixture(tmp_path / "ck", seed=0, shards=1)
    assert not (ck / "model.safetensors.index.json").exists()
    out = convert(ck, tmp_path / "one.gguf").outputs[0]
    check_file(ckpt, out, expected_sources(ckpt, "dsv4")["target"], fp8_as="fp8", norms_f32=False)


def test_chat_template_renders_v4_chat_format(converted):
    jinja2 = pytest.importorskip("jinja2")
    tpl = fields(converted())["tokenizer.chat_template"]
    env = jinja2.Environment()
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there!", "reasoning_content": "greet"},
            {"role": "user", "content": "Capital of France?"}]
    out = env.from_string(tpl).render(messages=msgs, add_generation_prompt=True)
    assert out == ("<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>Hello<｜Assistant｜></think>Hi there!"
                   "<｜end▁of▁sentence｜><｜User｜>Capital of France?<｜Assistant｜></think>")
    think = env.from_string(tpl).render(messages=msgs[:2], add_generation_prompt=True, thinking=True)
    assert think.endswith("<｜User｜>Hello<｜Assistant｜><think>")


def test_chat_template_keeps_reasoning_after_the_last_user_turn(converted):
    jinja2 = pytest.importorskip("jinja2")
    tpl = jinja2.Environment().from_string(fields(converted())["tokenizer.chat_template"])
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": "R"}]
    assert tpl.render(messages=msgs, enable_thinking=True).endswith(
        "<｜User｜>Q<｜Assistant｜><think>R</think>A<｜end▁of▁sentence｜>")
    assert tpl.render(messages=msgs).endswith("<｜User｜>Q<｜Assistant｜></think>A<｜end▁of▁sentence｜>")
