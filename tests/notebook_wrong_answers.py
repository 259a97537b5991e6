"""Typical wrong answers to the notebooks' "implement, then check" exercises (tests/test_notebooks.py).

Each is a mistake a learner makes, named by the exercise stub it stands in for; the check cell must
FAIL it with the grader's mine-vs-reference message, naming the failing case, where the solutions in
notebooks/solutions.py PASS. {stub name: (Wrong, ...)}: one or more per stub.

What a FAIL must say is written as the grader prints it (minibridge/assignments/grade.py):

    FAIL  softmax  y, case "row with a +1000 logit": worst error inf > 0.00012207 at index (0, 0, 0): mine nan vs ...
                   hint: nan where the scores are large: exp overflowed; subtract the row max before exp

`names` is the text between the component and the colon: the output and its case label (the labels
are the snapshot's named inputs, components.Case), or the output alone for a component without cases.
`hint` is a pattern the hint line must match, given only where the grader has a hint for the mistake
and only its gist (the wording of hints is edited more often than the labels).
"""

import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Wrong:
    """A typical wrong answer and what the check cell's FAIL must show for it."""

    fn: Callable
    names: str  # the failing output and case as the FAIL line names them: 'y, case "label"', or 'pooled'
    hint: Optional[str] = None  # a regular expression a "hint:" line must match (case-insensitive), if any
    shows: Optional[str] = None  # more text the FAIL line must show (the failing element), if any

    def problems(self, printed):
        """What is missing from a check cell's output for this wrong answer: [] when nothing is."""
        lines = printed.splitlines()
        fail = next((line for line in lines if line.startswith("FAIL")), None)
        if fail is None:
            return ["no FAIL line"]
        out = []
        if not re.match(r"FAIL\s+\S+\s+" + re.escape(self.names) + ": ", fail):
            out.append(f"the FAIL line does not name {self.names!r}")
        if "mine" not in fail or "reference" not in fail:
            out.append("the FAIL line does not show the element, mine beside the reference's")
        if self.shows and self.shows not in fail:
            out.append(f"the FAIL line does not show {self.shows!r}")
        hints = [line.strip() for line in lines if line.strip().startswith("hint:")]
        if self.hint and not any(re.search(self.hint, h, re.IGNORECASE) for h in hints):
            out.append(f"no hint line matches {self.hint!r} (hints: {hints})")
        return out



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
        best = symbols[i], symbols[i + 1]
        merged, i = [], 0
        while i < len(symbols):  # every occurrence, as the solution does: only the choice of pair is wrong
            if tuple(symbols[i:i + 2]) == best:
                merged.append(best[0] + best[1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged


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


def link_tower_add_for_every_type(p, h, c, link_tower_type, eps):
    from minibridge.ops import layer_norm

    return layer_norm(h + c, p["LayerNorm"], eps)  # the published "add", whatever link_tower_type says


def pooler_mean_of_tokens(p, features):
    return np.tanh(features.mean(axis=1) @ p["dense"]["weight"].T + p["dense"]["bias"])


def itm_logits_weight_not_transposed(p, pooled):
    return pooled @ p["fc"]["weight"].reshape(pooled.shape[-1], -1) + p["fc"]["bias"]


def linear_without_the_bias(x, p):
    return x @ p["weight"].T  # the bias forgotten, also where p has one


WRONG = {
    "my_softmax": (Wrong(softmax_without_the_max, 'y, case "row with a +1000 logit"', r"\bmax\b", shows="mine nan"),),
    "my_bpe": (Wrong(bpe_highest_rank_first, 'tokens, case "words of the training captions"', r"lowest rank"),),
    "my_patchify": (Wrong(patchify_pixel_major, 'patches, case "the top-left patch (the same in any grid order)"',
                          r"channel"),),
    "my_quick_gelu": (Wrong(quick_gelu_as_silu, 'y, case "the bend, a dense grid on [-6, 6]"', r"1\.702"),),
    "my_position_ids": (Wrong(position_ids_from_zero, 'position_ids, case "no padding"', r"from 0|pad_token_id \+ 1"),),
    "my_layer_norm": (Wrong(layer_norm_without_eps, 'y, case "std 1e-3 row where eps dominates"', r"\beps\b"),),
    # link_tower has no cases: the FAIL names the bridge type (an output) furthest off, "also failing" the others.
    "my_link_tower": (Wrong(link_tower_without_layer_norm, "interpolate"),
                      Wrong(link_tower_add_for_every_type, "interpolate", r"interpolate.*beta")),
    "my_pooler": (Wrong(pooler_mean_of_tokens, "pooled"),),
    "my_itm_logits": (Wrong(itm_logits_weight_not_transposed, "itm_logits"),),
    "my_linear": (Wrong(linear_without_the_bias, "with_bias"),),
}
