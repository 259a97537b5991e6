"""Grade a function written in a notebook, as the handout's grader would grade it in a copy.

    from minibridge.assignments import check
    check("softmax", softmax=my_softmax)                     # prints PASS/FAIL lines, returns the Result
    check("heads", pooler=my_pooler, itm_logits=my_itm)      # several functions of one component

The keywords are the functions the component covers (`Component.covers`, the part after the dot);
the ones not given are the reference package's own. The component runs on the same stored inputs,
tiny weights and tolerances as `python -m minibridge.assignments check`, and prints the same lines.
"""

import traceback
from pathlib import Path

from .. import bridge, heads, model, ops, text, tokenizer, vision
from .components import BY_NAME, COMPONENTS, Tiny
from .grade import load_snapshots, report, run_component

_REFERENCE = {"ops": ops, "vision": vision, "text": text, "bridge": bridge, "heads": heads, "model": model,
              "tokenizer": tokenizer}


class _Module:
    """A reference module with some of its functions replaced by the learner's (a read-only view)."""

    def __init__(self, module, overrides):
        self._module, self._overrides = module, overrides

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._overrides[name] if name in self._overrides else getattr(self._module, name)


class NotebookStudent:
    """What `run_component` calls: student.ops, student.text, ... with the learner's functions in them."""

    def __init__(self, functions):
        """functions: {"module.function": callable}."""
        self.functions = functions
        by_module = {}
        for qualified, fn in functions.items():
            module, name = qualified.split(".")
            by_module.setdefault(module, {})[name] = fn
        for module, reference in _REFERENCE.items():
            setattr(self, module, _Module(reference, by_module.get(module, {})))

    def where(self, error):
        """ " (in my_softmax, line 3 of its notebook cell)" for the last frame of the learner's code, or ""."""
        files = {getattr(getattr(fn, "__code__", None), "co_filename", None) for fn in self.functions.values()}
        files.discard(None)
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename in files]
        if not frames:
            return ""
        f = frames[-1]
        if f.filename.startswith("<") or "ipykernel_" in f.filename or "ipython-input" in f.filename:
            return f" (in {f.name}, line {f.lineno} of its notebook cell)"
        return f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"


def check(component, /, **functions):
    """Grade the learner's functions for one component; prints the grader's lines and returns its Result.

    component: a component name (`python -m minibridge.assignments list`); keywords: function name ->
    the learner's function, for the functions that component covers (the others stay the reference's).
    A learner's mistake (an exception, a wrong shape, a wrong value) is a FAIL line, never an
    exception; an unknown component or keyword raises ValueError naming the valid ones.
    """
    if component not in BY_NAME:
        raise ValueError(f"unknown component {component!r}; choose from {[c.name for c in COMPONENTS]}")
    c = BY_NAME[component]
    valid = {f.split(".")[1]: f for f in c.covers}
    unknown = sorted(set(functions) - set(valid))
    if unknown:
        raise ValueError(f"component {component!r} covers {sorted(valid)}, not {unknown}"
                         f" (a function of another component is checked with check(\"<that component>\", ...))")
    student = NotebookStudent({valid[name]: fn for name, fn in functions.items()})
    result = run_component(c, student, load_snapshots()[component], Tiny.make())
    print(report([result]))
    return result
