#!/usr/bin/env python3
"""Writes the GGUF fixtures of tests/unit/test_tensorfile.c with the `gguf`
package (the reference writer and quantizer):

  quant.gguf        tensors "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"
                    (shape (2, 64)) and, for each, "ref.<name>": the values
                    gguf.quants.dequantize gives, stored as F32; plus one
                    metadata key of every value type.
  tiny_llama.gguf   a 2-layer llama (C=16, 4 heads, 2 kv heads, head_dim 4,
                    d_ff 32, vocab 32, untied) written as llama.cpp's
                    converter does, Q/K rows permuted for its RoPE.
  tiny_llama_ref.safetensors  the same weights in Hugging Face layout
                    (canonical names, no prefix): what the loader must give.

Run: .venv/bin/python tests/reference/make_tensorfile_fixtures.py
"""
import os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tensorfile")


def quant_fixture(path):
    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 1.5)
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 2.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.iarr", [1, 2, 3])
    w.add_array("t.farr", [0.5, -1.0])
    w.add_array("t.sarr", ["a", "bc", ""])
    w.add_array("t.nested", [[1, 2], [3]])
    tensors = {}
    base = rng.standard_normal((2, 64)).astype(np.float32)
    tensors["f32"] = (base, T.F32)
    tensors["f16"] = (base.astype(np.float16), T.F16)
    tensors["bf16"] = (gguf.quants.quantize(base, T.BF16), T.BF16)
    for name, qt in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)):
        tensors[name] = (gguf.quants.quantize(base, qt), qt)
    for name, (arr, qt) in tensors.items():
        if qt in (T.F32, T.F16):
            w.add_tensor(name, arr)
            ref = arr.astype(np.float32)
        else:
            w.add_tensor(name, arr, raw_dtype=qt)
            ref = gguf.quants.dequantize(arr, qt).astype(np.float32)
        assert ref.shape == (2, 64), (name, ref.shape)
        w.add_tensor("ref." + name, ref)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def permute(weights, n_head, n_head_kv):
    # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2,
                            *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def reverse_permute(weights, n_head, num_kv_heads=None):
    # transformers modeling_gguf_pytorch_utils.py, _reverse_permute_weights
    if num_kv_heads is not None and n_head != num_kv_heads:
        n_head = num_kv_heads
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def tiny_llama(path_gguf, path_ref):
    rng = np.random.default_rng(99)
    C, NH, NKV, D, F, V, L = 16, 4, 2, 4, 32, 32, 2
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    hf = {"embed_tokens.weight": r(V, C), "norm.weight": r(C),
          "lm_head.weight": r(V, C)}
    for l in range(L):
        p = f"layers.{l}."
        hf[p + "input_layernorm.weight"] = r(C)
        hf[p + "post_attention_layernorm.weight"] = r(C)
        hf[p + "self_attn.q_proj.weight"] = r(NH * D, C)
        hf[p + "self_attn.k_proj.weight"] = r(NKV * D, C)
        hf[p + "self_attn.v_proj.weight"] = r(NKV * D, C)
        hf[p + "self_attn.o_proj.weight"] = r(C, NH * D)
        hf[p + "mlp.gate_proj.weight"] = r(F, C)
        hf[p + "mlp.up_proj.weight"] = r(F, C)
        hf[p + "mlp.down_proj.weight"] = r(C, F)
    save_file(hf, path_ref)
    w = gguf.GGUFWriter(path_gguf, arch="llama")
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(C)
    w.add_feed_forward_length(F)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(V)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"embed_tokens.weight": "token_embd.weight",
             "norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    blk = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
           "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}
    for name, t in hf.items():
        if name in names:
            gname = names[name]
        else:
            _, l, rest = name.split(".", 2)
            gname = f"blk.{l}.{blk[rest[:-len('.weight')]]}.weight"
        if "q_proj" in name:
            t = permute(t, NH, NH)
            assert np.array_equal(reverse_permute(t, NH, NH), hf[name])
        elif "k_proj" in name:
            t = permute(t, NH, NKV)
            assert np.array_equal(reverse_permute(t, NH, NKV), hf[name])
        w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    quant_fixture(os.path.join(OUT, "quant.gguf"))
    tiny_llama(os.path.join(OUT, "tiny_llama.gguf"),
               os.path.join(OUT, "tiny_llama_ref.safetensors"))
    print("wrote", sorted(os.listdir(OUT)))
