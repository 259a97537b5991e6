"""Typical wrong answers to the notebooks' "implement, then check" exercises (tests/test_notebooks.py).

Each is a mistake a learner makes, named by the exercise stub it stands in for; the check cell must
FAIL it with the grader's mine-vs-reference message (or the exception it raised), where the
solutions in notebooks/solutions.py PASS. {stub name: (wrong function, text the FAIL line shows:
the failing output's name, or what went wrong)}.
"""

import numpy as np


def softmax_without_the_max(x):
    e = np.exp(x)  # overflows for large scores: inf / inf = nan
    return e / e.sum(axis=-1, keepdims=True)


def bpe_highest_rank_first(word, ranks):
    symbols = list(word)
    while True:
        ranked = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
        if not ranked:
            return symbols
        i = max(ranked)[1]  # the latest-learned merge instead of the earliest
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]


def patchify_pixel_major(pixels, patch_size):
    B, C, H, W = pixels.shape
    P = patch_size
    x = pixels[:, :, :H // P * P, :W // P * P].reshape(B, C, H // P, P, W // P, P)
    return x.transpose(0, 2, 4, 3, 5, 1).reshape(B, -1, C * P * P)  # [P, P, C] per patch: channels last


def quick_gelu_as_silu(x):
    return x / (1.0 + np.exp(-x))  # sigmoid(x), not sigmoid(1.702 x)


def position_ids_from_zero(input_ids, pad_token_id):
    return np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)  # 0, 1, 2, … and pads counted


def layer_norm_without_eps(x, p, eps):
    return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True) * p["weight"] + p["bias"]


def link_tower_without_layer_norm(p, h, c, link_tower_type, eps):
    return h + c


def pooler_mean_of_tokens(p, features):
    return np.tanh(features.mean(axis=1) @ p["dense"]["weight"].T + p["dense"]["bias"])


def itm_logits_weight_not_transposed(p, pooled):
    return pooled @ p["fc"]["weight"].reshape(pooled.shape[-1], -1) + p["fc"]["bias"]


WRONG = {
    "my_softmax": (softmax_without_the_max, "mine nan"),
    "my_bpe": (bpe_highest_rank_first, "differ"),
    "my_patchify": (patchify_pixel_major, "patches"),
    "my_quick_gelu": (quick_gelu_as_silu, "worst error"),
    "my_position_ids": (position_ids_from_zero, "position_ids"),
    "my_layer_norm": (layer_norm_without_eps, "worst error"),
    "my_link_tower": (link_tower_without_layer_norm, "worst error"),
    "my_pooler": (pooler_mean_of_tokens, "pooled"),
    "my_itm_logits": (itm_logits_weight_not_transposed, "itm_logits"),
}
