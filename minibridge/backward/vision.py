"""The image tower backward: gradients of vision.py's ViT block and embeddings, batch-first.

    dx, g = vision_block_backward(block_params, x, cfg, dout)                  # [B, L, Dv] -> [B, L, Dv]
    g = vision_embed_backward(p["vision_model"]["visual"], pixels, cfg, dout)  # [B, L, Dv] -> weight grads

Each reads as its forward's lines in reverse: recompute the forward's intermediates by calling the
forward functions, then walk back from the output. A pre-LN residual `x = x + f(LN(x))` passes the
upstream gradient through unchanged and adds f's path to it. Axis legend: ops.py (N patches, L = 1 + N).
"""

from ..backend import array_module
from ..ops import attention, layer_norm, linear, quick_gelu
from ..vision import patch_embed, patchify
from .ops import attention_backward, layer_norm_backward, linear_backward, quick_gelu_backward


def vision_block_backward(p, x, cfg, dout):
    """Gradient of vision.vision_block: x + MHA(ln_1(x)), then x + MLP(ln_2(x)).

    x, dout: [B, L, Dv]. Returns (dx [B, L, Dv], grads {"ln_1", "attn": {"in_proj_weight", "in_proj_bias",
    "out_proj"}, "ln_2", "mlp": {"c_fc", "c_proj"}}).
    """
    eps, H = cfg.layer_norm_eps, cfg.num_attention_heads
    xp = array_module(x)
    packed = {"weight": p["attn"]["in_proj_weight"], "bias": p["attn"]["in_proj_bias"]}  # [3·Dv, Dv], [3·Dv]
    # Forward, recomputed.
    h1 = layer_norm(x, p["ln_1"], eps)  # [B, L, Dv]
    q, k, v = xp.split(linear(h1, packed), 3, axis=-1)  # [B, L, 3·Dv] -> 3 × [B, L, Dv]
    context, _ = attention(q, k, v, H)  # [B, L, Dv]
    x2 = x + linear(context, p["attn"]["out_proj"])  # [B, L, Dv]: the stream after attention
    h2 = layer_norm(x2, p["ln_2"], eps)  # [B, L, Dv]
    pre = linear(h2, p["mlp"]["c_fc"])  # [B, L, Dv] -> [B, L, 4·Dv]
    act = quick_gelu(pre)  # [B, L, 4·Dv]
    # Backward of the MLP half: out = x2 + c_proj(quick_gelu(c_fc(ln_2(x2)))).
    dact, g_proj = linear_backward(act, p["mlp"]["c_proj"], dout)  # [B, L, Dv] -> [B, L, 4·Dv]
    dpre = quick_gelu_backward(pre, dact)  # [B, L, 4·Dv]
    dh2, g_fc = linear_backward(h2, p["mlp"]["c_fc"], dpre)  # [B, L, 4·Dv] -> [B, L, Dv]
    dx2, g_ln2 = layer_norm_backward(x2, p["ln_2"], eps, dh2)  # [B, L, Dv]
    dx2 = dx2 + dout  # [B, L, Dv]: plus the residual's copy
    # Backward of the attention half: x2 = x + out_proj(attn(split(in_proj(ln_1(x))))).
    dcontext, g_out = linear_backward(context, p["attn"]["out_proj"], dx2)  # [B, L, Dv]
    dq, dk, dv = attention_backward(q, k, v, H, None, dcontext)  # 3 × [B, L, Dv]
    dqkv = xp.concatenate([dq, dk, dv], axis=-1)  # 3 × [B, L, Dv] -> [B, L, 3·Dv]: undoes the split
    dh1, g_in = linear_backward(h1, packed, dqkv)  # [B, L, 3·Dv] -> [B, L, Dv]
    dx, g_ln1 = layer_norm_backward(x, p["ln_1"], eps, dh1)  # [B, L, Dv]
    dx = dx + dx2  # [B, L, Dv]: plus the residual's copy
    grads = {"ln_1": g_ln1,
             "attn": {"in_proj_weight": g_in["weight"], "in_proj_bias": g_in["bias"], "out_proj": g_out},
             "ln_2": g_ln2, "mlp": {"c_fc": g_fc, "c_proj": g_proj}}
    return dx, grads


def vision_embed_backward(p, pixels, cfg, dout):
    """Gradient of vision.vision_embed's weights: patch conv + CLS token + position table, then ln_pre.

    p: the "visual" subtree, pixels: [B, C, H, W] with H = W = cfg.image_size, dout: [B, L, Dv].
    Returns grads {"embeddings": {"class_embedding", "patch_embedding": {"weight"},
    "position_embedding": {"weight"}}, "ln_pre": {"weight", "bias"}}. The pixels get no gradient.
    """
    H, W = pixels.shape[2:]
    if H != cfg.image_size or W != cfg.image_size:  # as the reference, which refuses other sizes too
        raise ValueError(f"vision_embed_backward: pixels of {H}×{W} do not match the model's image_size "
                         f"{cfg.image_size}×{cfg.image_size}; training takes images of the model's size "
                         f"(no interpolate_pos_encoding)")
    xp = array_module(dout)
    emb = p["embeddings"]
    kernel = emb["patch_embedding"]["weight"]  # [Dv, C, P, P]
    table = emb["position_embedding"]["weight"]  # [L, Dv]
    # Forward, recomputed.
    patches = patchify(pixels, kernel.shape[-1])  # [B, C, H, W] -> [B, N, C·P·P]
    tokens = patch_embed(pixels, kernel)  # [B, N, Dv]
    B, N, Dv = tokens.shape
    cls = xp.broadcast_to(emb["class_embedding"], (B, 1, Dv)).astype(tokens.dtype)  # [Dv] -> [B, 1, Dv]
    x = xp.concatenate([cls, tokens], axis=1) + table  # [B, L, Dv]
    # Backward, line by line in reverse.
    dx, g_ln = layer_norm_backward(x, p["ln_pre"], cfg.layer_norm_eps, dout)  # [B, L, Dv]
    dtable = dx.sum(axis=0)  # [B, L, Dv] -> [L, Dv]: the table was broadcast over the batch
    dcls = dx[:, 0].sum(axis=0)  # [B, Dv] -> [Dv]: so was the CLS token
    dtokens = dx[:, 1:]  # [B, N, Dv]
    # tokens = patches @ Kᵀ with K the kernel flattened to [Dv, C·P·P], so dK = dtokensᵀ @ patches.
    dkernel = dtokens.reshape(B * N, Dv).T @ patches.reshape(B * N, -1)  # [Dv, B·N] @ [B·N, C·P·P] -> [Dv, C·P·P]
    dkernel = dkernel.reshape(kernel.shape)  # -> [Dv, C, P, P]
    return {"embeddings": {"class_embedding": dcls, "patch_embedding": {"weight": dkernel},
                           "position_embedding": {"weight": dtable}},
            "ln_pre": g_ln}
