"""The backward pass, by hand: the gradient of every forward function, file for file (ops, text,
vision, bridge, heads, model), in the forward's own style: explicit functions over arrays, shape
comments, no autograd engine.

Each `f_backward` takes what `f` took, plus the gradient of f's output (d<name>), and returns the
gradients of f's array inputs and, as a dict shaped like f's parameter subtree, of its parameters.
It recomputes what it needs from f's inputs (the forward keeps only each layer's input, and only
when gradients are asked for), so inference memory does not grow.

Reading order: ops (the primitives' derivatives) → text, vision → bridge → heads → model
(`loss_and_grads`: one forward, then the chain rule from the loss back to every weight).
"""
