"""How a whole model's loss_and_grads is compared with torch autograd's (issue 12), shared by
test_backward_model.py (torch beside minibridge), test_backward_fixture.py (torch's numbers stored in
tests/fixtures/gradients/, no torch needed) and make_grad_fixtures.py (which stores them).

torch is imported only inside `reference_loss_and_grads`, so that a machine without it imports this file.
"""

import hashlib

import numpy as np

import minibridge as mb
from minibridge.backend import to_numpy
from minibridge.weights import save_random_checkpoint

# The loss is one float32 number computed in float64 by both (log-sum-exp): 1e-5 relative (the bound).
LOSS_RTOL = 1e-5
# Each gradient is a chain of float32 matrix products summed in different orders by BLAS and by torch;
# errors grow with depth but stay far below this bound: 1e-3 × the largest entry of that tensor's reference gradient.
GRAD_TOL = 1e-3

CLASSES = {"itm": mb.BridgeTowerForImageAndTextRetrieval, "mlm": mb.BridgeTowerForMaskedLM,
           "itc": mb.BridgeTowerForContrastiveLearning}


def random_model(folder, config, head, seed):
    """minibridge's model of one head class with weights.random_weights(seed), loaded from a checkpoint
    folder as a user's would be (names as in the file, a tied decoder tied)."""
    save_random_checkpoint(folder, config, heads=(head,), seed=seed)
    return CLASSES[head].from_pretrained(folder)


def weights_sha256(model):
    """A checksum of every weight of the model (names, shapes, float32 bytes), in name order."""
    h = hashlib.sha256()
    for name, a in sorted(model.state_dict().items()):
        a = np.asarray(to_numpy(a), dtype="<f4")
        h.update(f"{name} {a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def labels_for(head, inputs, vocab_size, seed=0):
    """Training labels for a batch: ITM [B] in {0, 1}; MLM [B, T] token ids, most and every pad -100; ITC None."""
    rng = np.random.default_rng(seed)
    ids = inputs["input_ids"]
    if head == "itm":
        return rng.integers(0, 2, size=ids.shape[0])
    if head == "mlm":
        labels = rng.integers(0, vocab_size, size=ids.shape)
        labels[rng.random(ids.shape) < 0.4] = -100  # most positions ignored, as in MLM training
        labels[inputs["attention_mask"] == 0] = -100
        return labels
    return None


def reference_loss_and_grads(ref, head, inputs, labels, dtype=None):
    """(loss, {name: gradient}) of a transformers model by torch autograd; names as in its
    named_parameters (the checkpoint's), only the parameters that got a gradient. dtype: torch.float32 default."""
    import torch

    dtype = dtype or torch.float32
    ref = ref.to(dtype)
    ref.zero_grad()
    kwargs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    kwargs["pixel_values"] = kwargs["pixel_values"].to(dtype)
    if head == "itc":
        out = ref(**kwargs, return_loss=True)
    else:
        out = ref(**kwargs, labels=torch.from_numpy(labels))
    out.loss.backward()
    grads = {name: p.grad.numpy() for name, p in ref.named_parameters() if p.grad is not None}
    return out.loss.item(), grads


def scale_name(name):
    """The tensor whose gradient sets the scale of `name`'s error.

    subtle: an attention key bias adds the same number to every score of a query's row, and softmax
    ignores such a shift, so its exact gradient is 0: both sides hold float32 rounding noise (~1e-8)
    there, and it is measured against its key weight's gradient instead (for both it is "non-zero").
    """
    return name.replace("key.bias", "key.weight") if ".key.bias" in name else name


def check_loss_and_grads(loss, grads, ref_loss, ref_grads, label=""):
    """Assert the loss within LOSS_RTOL of the reference's, the same set of tensors with a non-zero
    gradient, and each gradient within GRAD_TOL × max|reference gradient| of that tensor, each failure
    printing mine vs reference at the worst element. Returns the worst relative error."""
    loss = float(loss)
    assert abs(loss - ref_loss) <= LOSS_RTOL * abs(ref_loss), \
        f"{label}loss: mine {loss!r} vs reference {ref_loss!r} (relative {abs(loss - ref_loss) / abs(ref_loss):.2e} > {LOSS_RTOL})"
    grads = {k: np.asarray(to_numpy(g)) for k, g in grads.items()}
    nonzero_ref = {k for k, g in ref_grads.items() if np.any(g != 0)}
    nonzero_mine = {k for k, g in grads.items() if np.any(g != 0)}
    assert nonzero_mine == nonzero_ref, (f"{label}the tensors with a non-zero gradient differ: only mine "
                                         f"{sorted(nonzero_mine - nonzero_ref)[:5]}; only the reference's "
                                         f"{sorted(nonzero_ref - nonzero_mine)[:5]}")
    worst = 0.0
    for name in sorted(nonzero_ref):
        g, r = grads[name], ref_grads[name]
        assert g.shape == r.shape, f"{label}{name}: gradient shape mine {g.shape} vs reference {r.shape}"
        diff = np.abs(g.astype(np.float64) - r)
        at = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))  # () for a 0-d one
        err = float(diff[at] / np.abs(ref_grads[scale_name(name)]).max())
        assert err < GRAD_TOL, (f"{label}{name}: max|mine − reference| = {err:.2e} × max|reference| (tol {GRAD_TOL}) "
                                f"at index {at}: mine {g[at]:.7g} vs reference {r[at]:.7g}")
        worst = max(worst, err)
    return worst
