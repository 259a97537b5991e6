"""The image tower: a CLIP Vision Transformer (bridgetower.md §4), batch-first throughout.

    x = vision_embed(p["vision_model"]["visual"], pixels, cfg)   # [B, 3, H, W] -> [B, L, Dv]
    x, probs = vision_block(block_params, x, cfg)                  # [B, L, Dv] -> [B, L, Dv]
    y = layer_norm(x, visual["ln_post"], eps)                      # what the bridges read (bridge.py)

subtle: the reference runs this tower sequence-first ([L, B, Dv]) because it uses
torch.nn.MultiheadAttention; we do not (CONTRIBUTING.md habit 5), and transpose only in the parity tests.
"""

import math

import numpy as np

from .backend import array_module
from .ops import attention, layer_norm, linear, quick_gelu


def patchify(pixels, patch_size):
    """Cut images into non-overlapping P×P patches, each flattened channel-major.  [B, C, H, W] -> [B, N, C·P·P]

    The patch conv (kernel = stride = P, no bias) is exactly a matrix product of these rows with the
    flattened kernel. Rows and columns beyond the last whole patch are dropped, as the conv does.
    """
    # BEGIN SOLUTION
    B, C, H, W = pixels.shape
    gh, gw = H // patch_size, W // patch_size
    x = pixels[:, :, : gh * patch_size, : gw * patch_size]  # [B, C, H, W] -> [B, C, gh·P, gw·P]
    x = x.reshape(B, C, gh, patch_size, gw, patch_size)  # [B, C, gh, P, gw, P]
    x = x.transpose(0, 2, 4, 1, 3, 5)  # -> [B, gh, gw, C, P, P]: patches in row-major grid order
    return x.reshape(B, gh * gw, C * patch_size * patch_size)  # -> [B, N, C·P·P]
    # END SOLUTION


def patch_embed(pixels, kernel):
    """The patch conv (kernel = stride = P, no bias) as one matrix product.  [B, C, H, W] -> [B, N, Dv]

    kernel: the conv weight [Dv, C, P, P]; each flattened patch row meets each flattened filter.
    """
    patches = patchify(pixels, kernel.shape[-1])  # [B, N, C·P·P]
    return patches @ kernel.reshape(kernel.shape[0], -1).T  # [B, N, C·P·P] @ [C·P·P, Dv] -> [B, N, Dv]


def vision_embed(p, pixels, cfg, interpolate_pos_encoding=False):
    """Patch embedding + CLS token + position embedding, then ln_pre.  [B, C, H, W] -> [B, L, Dv]"""
    emb = p["embeddings"]
    P = cfg.patch_size
    patches = patch_embed(pixels, emb["patch_embedding"]["weight"])  # [B, N, Dv]
    xp = array_module(patches)
    B = patches.shape[0]
    cls = xp.broadcast_to(emb["class_embedding"], (B, 1, patches.shape[-1]))  # [Dv] -> [B, 1, Dv]
    x = xp.concatenate([cls.astype(patches.dtype), patches], axis=1)  # [B, 1 + N, Dv] = [B, L, Dv]
    table = emb["position_embedding"]["weight"]  # [L0, Dv]
    H, W = pixels.shape[2:]
    if interpolate_pos_encoding and (x.shape[1] != table.shape[0] or H != W):
        table = interpolate_position_table(table, H // P, W // P)  # [L0, Dv] -> [L, Dv]
    x = x + table  # [B, L, Dv]
    return layer_norm(x, p["ln_pre"], cfg.layer_norm_eps)


def vision_block(p, x, cfg):
    """One pre-LN ViT block: x + MHA(ln_1(x)), then x + MLP(ln_2(x)) with QuickGELU.

    x: [B, L, Dv]. Returns (x [B, L, Dv], attention probabilities [B, H, L, L]).
    """
    # BEGIN SOLUTION
    h = layer_norm(x, p["ln_1"], cfg.layer_norm_eps)
    # subtle: q, k and v share one packed (3·Dv, Dv) matrix, rows stacked [W_q; W_k; W_v] (bridgetower.md §2).
    qkv = linear(h, {"weight": p["attn"]["in_proj_weight"], "bias": p["attn"]["in_proj_bias"]})  # [B, L, 3·Dv]
    q, k, v = array_module(qkv).split(qkv, 3, axis=-1)  # [B, L, 3·Dv] -> 3 × [B, L, Dv]
    context, probs = attention(q, k, v, cfg.num_attention_heads)  # no mask: every patch sees every patch
    x = x + linear(context, p["attn"]["out_proj"])
    h = layer_norm(x, p["ln_2"], cfg.layer_norm_eps)
    x = x + linear(quick_gelu(linear(h, p["mlp"]["c_fc"])), p["mlp"]["c_proj"])  # Dv -> 4·Dv -> Dv
    return x, probs
    # END SOLUTION


def interpolate_position_table(table, grid_h, grid_w):
    """Resize the patch rows of a position table to a new grid with torch's bicubic rule.  [1+G², D] -> [1+gh·gw, D]

    Matches torch.nn.functional.interpolate(mode="bicubic", align_corners=False) (bridgetower.md §4 step 3):
    cubic convolution with A = -0.75, no antialiasing, edge pixels repeated. The CLS row is kept.
    """
    xp = array_module(table)
    G = math.isqrt(table.shape[0] - 1)
    grid = table[1:].reshape(G, G, -1)  # [G², D] -> [G, G, D]
    rows = xp.asarray(_bicubic_matrix(G, grid_h), dtype=table.dtype)  # [gh, G]
    cols = xp.asarray(_bicubic_matrix(G, grid_w), dtype=table.dtype)  # [gw, G]
    # Separable: resize along the grid rows, then along the columns.
    resized = xp.einsum("ij,jkd->ikd", rows, grid)  # [gh, G, D]
    resized = xp.einsum("kl,ild->ikd", cols, resized)  # [gh, gw, D]
    return xp.concatenate([table[:1], resized.reshape(grid_h * grid_w, -1)], axis=0)


def _bicubic_matrix(n_in, n_out, A=-0.75):
    """[n_out, n_in] matrix of torch's bicubic weights along one axis (align_corners=False)."""

    def cubic(t):  # Keys' cubic convolution kernel, |t| in [0, 2)
        t = abs(t)
        if t <= 1:
            return ((A + 2) * t - (A + 3)) * t * t + 1
        return ((A * t - 5 * A) * t + 8 * A) * t - 4 * A

    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        src = (o + 0.5) * scale - 0.5  # centre of output pixel o, in input coordinates
        i0 = math.floor(src)
        frac = src - i0
        for j, tap in enumerate(range(i0 - 1, i0 + 3)):
            m[o, min(max(tap, 0), n_in - 1)] += cubic(frac - (j - 1))  # clamp: repeat edge pixels
    return m
