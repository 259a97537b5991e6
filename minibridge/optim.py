"""AdamW, the optimiser BridgeTower is fine-tuned with: torch.optim.AdamW's update, in NumPy.

    optimizer = AdamW(model, lr=1e-5, weight_decay=0.01)
    loss, grads = model.loss_and_grads(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
    optimizer.step(grads)       # the model's weights change in place

For a weight θ with gradient g, at its own step t = 1, 2, ... (the steps that gave it a gradient):

    θ ← θ · (1 − lr·λ)                                   decoupled weight decay (Loshchilov & Hutter 2019)
    m ← β1·m + (1 − β1)·g                                first moment: a running mean of g
    v ← β2·v + (1 − β2)·g²                               second moment: a running mean of g²
    θ ← θ − lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + ε)

with λ = weight_decay and m, v starting at 0 (the bias corrections 1 − β^t undo that start). The
arithmetic is float32, in torch's order of operations (torch/optim/adam.py, `_single_tensor_adam`,
the path torch takes on the CPU), so the weights agree with torch's to rounding.
"""

from collections.abc import Mapping

import numpy as np

from .backend import array_module, to_numpy

class AdamW:
    """AdamW over a minibridge model's weights, named as in model.state_dict().

    step(grads) updates the weights that `grads` names and no other: a weight without a gradient keeps
    its value, moments and step count, as a torch parameter whose .grad is None. The hyperparameters are
    plain attributes (set `optimizer.lr` between steps for a schedule). Make the optimiser after
    `model.to(device)`: it follows the arrays of model.params.
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not value >= 0:  # (NaN is not >= 0 either)
                raise ValueError(f"AdamW: {name} must be a number >= 0, got {value!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas!r}")
        self.model = model
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))
        self.names = model.parameter_names()  # {name as saved: dotted key in model.params}
        self.state = {}  # name -> {"step": t, "m": array, "v": array}, for the weights that had a gradient
        self._tree = model.params
        self._copies = {}  # name -> the optimiser's own (writable) copy of that weight, once updated

    def step(self, grads):
        """Update the weights named in `grads` ({name: array of that weight's shape}) in place.

        Every gradient is checked before any weight changes: an unknown name, a wrong shape, a
        non-float dtype or a NaN/infinity is refused by name and the model is left as it was.
        """
        grads = self._checked(grads)
        b1, b2 = self.betas
        for name, g in grads.items():
            p = self._own(name)
            xp = array_module(p)
            s = self.state.setdefault(name, {"step": 0, "m": xp.zeros(p.shape, p.dtype), "v": xp.zeros(p.shape, p.dtype)})
            s["step"] += 1
            adamw_update(p, g, s["m"], s["v"], s["step"], self.lr, b1, b2, self.eps, self.weight_decay)

    def _checked(self, grads):
        """{name: float32 array where the weight lives}, or the first problem raised by name."""
        if not isinstance(grads, Mapping):
            raise TypeError(f"AdamW.step takes a dict {{weight name: gradient array}}, got {type(grads).__name__}")
        if self.model.params is not self._tree:
            raise RuntimeError("AdamW: model.params was replaced after the optimiser was made (model.to?); "
                               "make the optimiser after moving the model")
        checked = {}
        for name, g in grads.items():
            if name not in self.names:
                near = [n for n in (f"bridgetower.{name}", str(name).removeprefix("bridgetower.")) if n in self.names]
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ValueError(f"AdamW.step: {name!r} is not a weight of this {type(self.model).__name__} (names as "
                                 f"model.state_dict() gives them, e.g. {next(iter(self.names))!r}){hint}")
            p = _get(self.model.params, self.names[name])
            xp = array_module(p)
            g = xp.asarray(to_numpy(g) if xp is np else g)
            if g.dtype.kind != "f":
                raise TypeError(f"AdamW.step: the gradient of {name} must be floating point, got dtype {g.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"AdamW.step: the gradient of {name} has shape {tuple(g.shape)}, "
                                 f"expected the weight's {tuple(p.shape)}")
            if not bool(xp.isfinite(g).all()):
                raise ValueError(f"AdamW.step: the gradient of {name} holds {int((~xp.isfinite(g)).sum())} NaN or "
                                 "infinite value(s); refused before any weight changed")
            checked[name] = g.astype(np.float32, copy=False)
        return checked

    def _own(self, name):
        """The weight's array, copied on its first update so that nothing else is written: a memory-mapped
        checkpoint's arrays are read-only views of the file, and an array passed in stays the caller's."""
        p = _get(self.model.params, self.names[name])
        if self._copies.get(name) is not p:
            copy = array_module(p).array(p, dtype=np.float32, copy=True)
            _replace(self.model.params, p, copy)  # everywhere it sits: a tied MLM decoder is the embedding matrix
            self._copies[name] = p = copy
        return p


def adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step of one weight, in place: p, m and v (float32 arrays of g's shape) change; t >= 1.

    subtle: each scalar is computed in Python (float64) and then rounded to float32 once, as torch does
    with a Python number against a float32 tensor; the in-place operators keep 0-d arrays arrays.
    """
    xp = array_module(p)
    f32 = np.float32
    p *= f32(1 - lr * weight_decay)  # decoupled weight decay, before the moments (torch: mul_)
    m += f32(1 - beta1) * (g - m)  # = β1·m + (1 − β1)·g, written as torch's lerp_ computes it
    v *= f32(beta2)
    v += f32(1 - beta2) * g * g  # torch's addcmul_: ((1 − β2)·g)·g
    denom = xp.sqrt(v) / f32((1 - beta2**t) ** 0.5) + f32(eps)
    p += f32(-lr / (1 - beta1**t)) * m / denom  # torch's addcdiv_: (−step size · m) / denom


def _get(tree, key):
    """The array at a dotted key of the tree: "a.0.b" -> tree["a"][0]["b"]."""
    for part in key.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def _replace(tree, old, new):
    """Put `new` wherever the array `old` sits in the tree (found by identity, not by value)."""
    for key, value in (tree.items() if isinstance(tree, dict) else enumerate(tree)):
        if value is old:
            tree[key] = new
        elif isinstance(value, (dict, list)):
            _replace(value, old, new)
