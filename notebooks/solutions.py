"""Solutions to the "implement, then check" exercises of the walkthrough notebooks (notebooks/0*.ipynb).

Each function has the name of the notebook's exercise stub (my_softmax in notebook 1, ...), so a
learner who is stuck can compare, and tests/test_notebooks.py runs every check cell of every notebook
with these (they must PASS) and with a typical wrong answer (it must FAIL with the grader's message).

They are written as a learner would write them in a notebook cell: plain NumPy, a few lines, not
copied from the package (whose own versions are the course assignments' solutions). The grader
compares both with the same stored reference outputs (`minibridge.assignments.check`).

    from solutions import my_softmax          # in a notebook: see the answer, or skip the exercise
"""

import numpy as np

# ---- notebook 1 -------------------------------------------------------------------------------------


def my_softmax(x):
    """Softmax over the last axis.  [..., K] -> [..., K], each row sums to 1."""
    z = x - x.max(axis=-1, keepdims=True)  # the largest score becomes 0: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ---- notebook 2 -------------------------------------------------------------------------------------


def my_bpe(word, ranks):
    """Byte-pair merge one word: repeatedly merge the adjacent pair with the lowest rank.  str -> list[str]"""
    symbols = list(word)
    while True:
        ranked = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
        if not ranked:
            return symbols
        best = symbols[min(ranked)[1]], symbols[min(ranked)[1] + 1]
        merged, i = [], 0
        while i < len(symbols):  # every occurrence, left to right, without overlaps
            if tuple(symbols[i:i + 2]) == best:
                merged.append(best[0] + best[1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged


# ---- notebook 3 -------------------------------------------------------------------------------------


def my_patchify(pixels, patch_size):
    """[B, C, H, W] -> [B, N, C·P·P]: P×P patches in row-major grid order, each flattened channel-major."""
    B, C, H, W = pixels.shape
    P = patch_size
    rows = []
    for r in range(H // P):  # whole patches only: the conv drops what is left over
        for c in range(W // P):
            rows.append(pixels[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P].reshape(B, C * P * P))
    return np.stack(rows, axis=1)


def my_quick_gelu(x):
    """QuickGELU: x · sigmoid(1.702 x)."""
    return x / (1.0 + np.exp(-1.702 * x))


# ---- notebook 4 -------------------------------------------------------------------------------------


def my_position_ids(input_ids, pad_token_id):
    """RoBERTa position ids: real tokens count pad_token_id + 1, + 2, …; pads get pad_token_id.  [B, T] -> [B, T]"""
    real = input_ids != pad_token_id
    return np.where(real, np.cumsum(real, axis=1) + pad_token_id, pad_token_id)


def my_layer_norm(x, p, eps):
    """LayerNorm over the last axis: biased variance, eps inside the square root."""
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)  # NumPy's var divides by D (biased), as torch's LayerNorm
    return (x - mean) / np.sqrt(var + eps) * p["weight"] + p["bias"]


# ---- notebook 5 -------------------------------------------------------------------------------------


def my_link_tower(p, h, c, link_tower_type, eps):
    """The bridge: LayerNorm of h + c ("add"), of h·s + c ("scaled_add"), of h·(1 − β) + c·β ("interpolate")."""
    if link_tower_type == "add":
        mixed = h + c
    elif link_tower_type == "scaled_add":
        mixed = h * p["scaled_factor"] + c
    elif link_tower_type == "interpolate":
        mixed = h * (1 - p["beta"]) + c * p["beta"]
    else:
        raise ValueError(link_tower_type)
    return my_layer_norm(mixed, p["LayerNorm"], eps)


# ---- notebook 6 -------------------------------------------------------------------------------------


def my_pooler(p, features):
    """The first token of a stream through Linear + tanh.  [B, S, D] -> [B, D]"""
    return np.tanh(features[:, 0] @ p["dense"]["weight"].T + p["dense"]["bias"])


def my_itm_logits(p, pooled):
    """The ITM head: one Linear from the pooled pair to two logits.  [B, 2D] -> [B, 2]"""
    return pooled @ p["fc"]["weight"].T + p["fc"]["bias"]


# ---- notebook 7 -------------------------------------------------------------------------------------


def my_linear(x, p):
    """A Linear with torch's (out, in) weight, bias optional.  [..., in] -> [..., out]"""
    y = x @ p["weight"].T
    return y + p["bias"] if "bias" in p else y
