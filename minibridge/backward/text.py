"""The text tower backward: gradients of text.py's embeddings and post-LN BERT layers.

    dx, dkv, g = bert_attention_backward(p, x, kv, num_heads, eps, mask, dout)   # [B, Sq, D] -> [B, Sq, D], [B, Sk, D]
    dx, g = bert_ffn_backward(p, x, eps, dout)                                   # [B, S, D] -> [B, S, D]
    dx, g = bert_layer_backward(layer_params, x, cfg, mask, dout)                # [B, T, Dt] -> [B, T, Dt]
    g = text_embed_backward(p["text_model"]["embeddings"], input_ids, cfg, dout) # [B, T, Dt] -> weight grads

Each reads as its forward's lines in reverse: recompute the forward's intermediates by calling the
forward functions, then walk back from the output, one `*_backward` per forward line. A residual
`out = f(x) + x` sends the upstream gradient both ways: dx = df-path + dout. Axis legend: ops.py.
"""

from ..backend import array_module
from ..ops import attention, gelu, layer_norm, linear
from ..text import bert_attention, position_ids
from .ops import attention_backward, gelu_backward, layer_norm_backward, linear_backward


def bert_attention_backward(p, x, kv, num_heads, eps, mask, dout):
    """Gradient of text.bert_attention: LN(Wo·attn(x, kv) + x).

    x: [B, Sq, D], kv: [B, Sk, D], mask: None or additive [B, 1, 1, Sk], dout: [B, Sq, D].
    Returns (dx [B, Sq, D], dkv [B, Sk, D], grads {"self": {"query", "key", "value"}, "output": {"dense", "LayerNorm"}}).
    For self-attention kv is x: the caller adds dx + dkv.
    """
    # BEGIN SOLUTION
    sp = p["self"]
    # Forward, recomputed.
    q = linear(x, sp["query"])  # [B, Sq, D]
    k = linear(kv, sp["key"])  # [B, Sk, D]
    v = linear(kv, sp["value"])  # [B, Sk, D]
    context, _ = attention(q, k, v, num_heads, mask)  # [B, Sq, D]
    residual = linear(context, p["output"]["dense"]) + x  # [B, Sq, D]
    # Backward, line by line in reverse.
    dresidual, g_ln = layer_norm_backward(residual, p["output"]["LayerNorm"], eps, dout)  # [B, Sq, D]
    dcontext, g_dense = linear_backward(context, p["output"]["dense"], dresidual)  # [B, Sq, D]
    dq, dk, dv = attention_backward(q, k, v, num_heads, mask, dcontext)  # [B, Sq, D], 2 × [B, Sk, D]
    dkv_v, g_value = linear_backward(kv, sp["value"], dv)  # [B, Sk, D]
    dkv_k, g_key = linear_backward(kv, sp["key"], dk)  # [B, Sk, D]
    dx_q, g_query = linear_backward(x, sp["query"], dq)  # [B, Sq, D]
    dx = dx_q + dresidual  # [B, Sq, D]: the query path plus the residual's copy
    dkv = dkv_k + dkv_v  # [B, Sk, D]: keys and values both read kv
    grads = {"self": {"query": g_query, "key": g_key, "value": g_value},
             "output": {"dense": g_dense, "LayerNorm": g_ln}}
    return dx, dkv, grads
    # END SOLUTION


def bert_ffn_backward(p, x, eps, dout):
    """Gradient of text.bert_ffn: LN(W2·gelu(W1·x) + x).

    x, dout: [B, S, D]. Returns (dx [B, S, D], grads {"intermediate": {"dense"}, "output": {"dense", "LayerNorm"}}).
    """
    # BEGIN SOLUTION
    # Forward, recomputed.
    pre = linear(x, p["intermediate"]["dense"])  # [B, S, D] -> [B, S, F]
    h = gelu(pre)  # [B, S, F]
    residual = linear(h, p["output"]["dense"]) + x  # [B, S, F] -> [B, S, D]
    # Backward, line by line in reverse.
    dresidual, g_ln = layer_norm_backward(residual, p["output"]["LayerNorm"], eps, dout)  # [B, S, D]
    dh, g_out = linear_backward(h, p["output"]["dense"], dresidual)  # [B, S, D] -> [B, S, F]
    dpre = gelu_backward(pre, dh)  # [B, S, F]
    dx, g_in = linear_backward(x, p["intermediate"]["dense"], dpre)  # [B, S, F] -> [B, S, D]
    dx = dx + dresidual  # [B, S, D]: plus the residual's copy
    return dx, {"intermediate": {"dense": g_in}, "output": {"dense": g_out, "LayerNorm": g_ln}}
    # END SOLUTION


def bert_layer_backward(p, x, cfg, mask, dout):
    """Gradient of text.bert_layer: self-attention then FFN.

    x, dout: [B, T, Dt], mask: None or [B, 1, 1, T]. Returns (dx [B, T, Dt], grads {"attention", "intermediate", "output"}).
    """
    H, eps = cfg.num_attention_heads, cfg.layer_norm_eps
    a, _ = bert_attention(p["attention"], x, x, H, eps, mask)  # [B, T, Dt], recomputed
    da, g_ffn = bert_ffn_backward(p, a, eps, dout)  # [B, T, Dt]
    dx, dkv, g_attention = bert_attention_backward(p["attention"], x, x, H, eps, mask, da)  # 2 × [B, T, Dt]
    return dx + dkv, {"attention": g_attention, **g_ffn}  # self-attention: x was both queries and keys/values


def text_embed_backward(p, input_ids, cfg, dout):
    """Gradient of text.text_embed's tables: word + token-type + position embeddings, then LayerNorm.

    input_ids: [B, T] int, dout: [B, T, Dt]. Returns grads {"word_embeddings": {"weight"},
    "position_embeddings": {"weight"}, "token_type_embeddings": {"weight"}, "LayerNorm": {"weight", "bias"}}.
    """
    xp = array_module(dout)
    words_table = p["word_embeddings"]["weight"]  # [V, Dt]
    types_table = p["token_type_embeddings"]["weight"]  # [1, Dt]
    positions_table = p["position_embeddings"]["weight"]  # [P, Dt]
    pos = position_ids(input_ids, cfg.pad_token_id)  # [B, T]
    # Forward, recomputed.
    summed = words_table[input_ids] + types_table[0] + positions_table[pos]  # [B, T, Dt]
    # Backward.
    dsummed, g_ln = layer_norm_backward(summed, p["LayerNorm"], cfg.layer_norm_eps, dout)  # [B, T, Dt]
    dwords = xp.zeros_like(words_table)  # [V, Dt]
    # subtle: a token repeated in the batch reads its row several times, so its gradients add up;
    # add.at accumulates repeated indices, where dwords[input_ids] += ... would keep only one of them.
    xp.add.at(dwords, input_ids, dsummed)  # [B, T, Dt] scattered into [V, Dt]
    dpositions = xp.zeros_like(positions_table)  # [P, Dt]
    xp.add.at(dpositions, pos, dsummed)  # [B, T, Dt] scattered into [P, Dt]
    # subtle: torch builds both tables as nn.Embedding(..., padding_idx=pad_token_id), whose pad row
    # gets no gradient (it stays frozen in training); pads read word row pad_token_id and position row
    # pad_token_id (text.position_ids), so those rows' gradient is dropped as torch drops it.
    dwords[cfg.pad_token_id] = 0
    dpositions[cfg.pad_token_id] = 0
    dtypes = xp.zeros_like(types_table)  # [1, Dt]
    dtypes[0] = dsummed.sum(axis=(0, 1))  # [B, T, Dt] -> [Dt]: every token read row 0
    return {"word_embeddings": {"weight": dwords}, "position_embeddings": {"weight": dpositions},
            "token_type_embeddings": {"weight": dtypes}, "LayerNorm": g_ln}
