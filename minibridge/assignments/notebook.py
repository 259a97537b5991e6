"""Grade a function written in a notebook, as the handout's grader would grade it in a copy.

    from minibridge.assignments import check
    check("softmax", softmax=my_softmax)                     # prints PASS/FAIL lines, returns the Result
    check("heads", pooler=my_pooler, itm_logits=my_itm)      # several functions of one component

The keywords are the functions the component covers (`Component.covers`, the part after the last dot);
the ones not given are the reference package's own. The component runs on the same stored inputs,
tiny weights and tolerances as `python -m minibridge.assignments check`, and prints the same lines.

While it runs, the learner's functions replace the reference's in the package's modules (so the
reference code that calls them calls the learner's); a learner's function that calls the reference's
version of itself must hold it from before: `from minibridge.ops import softmax as reference_softmax`.
"""

import contextlib
import importlib
import traceback
from pathlib import Path

from . import GRADED_MODULES
from .components import BY_NAME, COMPONENTS, Tiny
from .grade import load_snapshots, report, run_component


class NotebookStudent:
    """What `run_component` calls: student.ops, student.text, student.backward.ops, ... (the reference
    modules) and where(error).

    The learner's functions are in those modules only while `patched` holds them there.
    """

    def __init__(self, functions):
        """functions: {"module.function": callable}, e.g. {"backward.ops.softmax_backward": my_softmax_backward}."""
        self.functions = functions
        self.modules = {m: importlib.import_module(f"..{m}", __package__) for m in GRADED_MODULES}
        for module in GRADED_MODULES:
            # student.backward is the package minibridge.backward, whose .ops (imported above) is backward/ops.py
            top = module.split(".")[0]
            setattr(self, top, importlib.import_module(f"..{top}", __package__))

    @contextlib.contextmanager
    def patched(self):
        """Put the learner's functions in place of the reference's, in every module that holds the reference's.

        subtle: a reference function calls another through its own module's globals (model.bridgetower
        calls the to_cross_space that model.py imported from bridge.py, vision.patch_embed calls patchify),
        so replacing it in its defining module alone would grade the reference's own in those calls.
        """
        modules = list(self.modules.values())
        replaced = []  # (module, name, the reference's function)
        try:
            for qualified, fn in self.functions.items():
                module, name = qualified.rsplit(".", 1)
                ref = getattr(self.modules[module], name)
                for m in modules:
                    if getattr(m, name, None) is ref:
                        replaced.append((m, name, ref))
                        setattr(m, name, fn)
            yield
        finally:
            for m, name, ref in reversed(replaced):
                setattr(m, name, ref)

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
    valid = {f.rsplit(".", 1)[1]: f for f in c.covers}
    unknown = sorted(set(functions) - set(valid))
    if unknown:
        raise ValueError(f"component {component!r} covers {sorted(valid)}, not {unknown}"
                         f" (a function of another component is checked with check(\"<that component>\", ...))")
    student = NotebookStudent({valid[name]: fn for name, fn in functions.items()})
    snapshot, tiny = load_snapshots()[component], Tiny.make()
    with student.patched():
        result = run_component(c, student, snapshot, tiny)
    print(report([result]))
    return result
