"""The text tower: RoBERTa embeddings and post-LN BERT layers (bridgetower.md §2-3).

    t = text_embed(p["text_model"]["embeddings"], input_ids, cfg)   # [B, T] -> [B, T, Dt]
    t, probs = bert_layer(layer_params, t, cfg, mask)                # [B, T, Dt] -> [B, T, Dt]

`bert_attention` and `bert_ffn` are reused, unchanged, by the cross-modal layers (bridge.py).
"""

from .backend import array_module
from .ops import attention, gelu, layer_norm, linear


def position_ids(input_ids, pad_token_id):
    """RoBERTa position ids: real tokens count up from pad_token_id + 1 = 2, pads get pad_token_id.  [B, T] -> [B, T]

    subtle: they start at 2, not 0, because fairseq reserved rows 0 and 1 (row 1 = the pad's).
    A left-padded text therefore gets the same positions as the unpadded one.
    """
    # BEGIN SOLUTION
    xp = array_module(input_ids)
    real = (input_ids != pad_token_id).astype(xp.int64)  # [B, T]
    return xp.cumsum(real, axis=1) * real + pad_token_id  # [B, T]
    # END SOLUTION


def text_embed(p, input_ids, cfg):
    """Word + token-type + position embeddings, then LayerNorm.  [B, T] int -> [B, T, Dt]"""
    # BEGIN SOLUTION
    words = p["word_embeddings"]["weight"][input_ids]  # [B, T, Dt]
    # subtle: type_vocab_size is 1, so every token gets row 0; token_type_ids are never used.
    types = p["token_type_embeddings"]["weight"][0]  # [Dt]
    positions = p["position_embeddings"]["weight"][position_ids(input_ids, cfg.pad_token_id)]  # [B, T, Dt]
    return layer_norm(words + types + positions, p["LayerNorm"], cfg.layer_norm_eps)
    # END SOLUTION


def bert_attention(p, x, kv, num_heads, eps, mask=None):
    """Multi-head attention with a post-LN residual: LN(Wo·attn(x, kv) + x).

    x: [B, Sq, D] queries, kv: [B, Sk, D] keys/values (kv is x for self-attention), mask: None or
    [B, 1, 1, Sk]. Returns (out [B, Sq, D], probs [B, H, Sq, Sk]).
    """
    # BEGIN SOLUTION
    sp = p["self"]
    q = linear(x, sp["query"])  # [B, Sq, D]
    k = linear(kv, sp["key"])  # [B, Sk, D]
    v = linear(kv, sp["value"])  # [B, Sk, D]
    context, probs = attention(q, k, v, num_heads, mask)  # [B, Sq, D]
    out = layer_norm(linear(context, p["output"]["dense"]) + x, p["output"]["LayerNorm"], eps)
    return out, probs
    # END SOLUTION


def bert_ffn(p, x, eps):
    """Feed-forward with a post-LN residual: LN(W2·gelu(W1·x) + x).  [B, S, D] -> [B, S, D] (via [B, S, F])"""
    h = gelu(linear(x, p["intermediate"]["dense"]))  # [B, S, F]
    return layer_norm(linear(h, p["output"]["dense"]) + x, p["output"]["LayerNorm"], eps)


def bert_layer(p, x, cfg, mask=None):
    """One RoBERTa encoder layer: self-attention then FFN, each post-LN.

    x: [B, T, Dt], mask: None or [B, 1, 1, T]. Returns (x [B, T, Dt], probs [B, H, T, T]).
    """
    a, probs = bert_attention(p["attention"], x, x, cfg.num_attention_heads, cfg.layer_norm_eps, mask)
    return bert_ffn(p, a, cfg.layer_norm_eps), probs
