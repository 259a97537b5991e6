"""Course assignments generated from minibridge's own source (CONTRIBUTING.md habit 14: one source for exercises).

    python -m minibridge.assignments build handout/             # the student copy, TODOs in place of solutions
    python -m minibridge.assignments check --impl handout/      # grade it: PASS/FAIL per component, then the score
    python -m minibridge.assignments list                       # the components, tolerances, snapshot sources
    python -m minibridge.assignments build week1/ --week 1      # one week's handout; `release` later gives its solutions
    python -m minibridge.assignments grade submissions/ --handout week1/ --csv grades.csv   # a folder, one table
    check("softmax", softmax=my_softmax)                        # in a notebook: grade one function (notebook.py)

components.py says what is assigned and how each piece is called; build.py writes the student copy
from the `# BEGIN SOLUTION` / `# END SOLUTION` markers in the source (course.py grades folders of
submissions and writes gradebooks); grade.py compares a copy with
snapshots.npz, which tests/make_snapshots.py computes with torch, transformers and tokenizers
(a checkout and the reference extra: `python tests/make_snapshots.py`). The instructor
guide is notebooks/assignments/README.md.
"""

# The package's modules that hold assigned functions (what components call through the student),
# dotted below minibridge: grade.py imports a student copy's by these names, notebook.py patches the
# reference's, and the command line (__main__.py) tells their errors from a broken grader. A
# component's functions are named the same way: "ops.softmax", "backward.ops.softmax_backward".
# This file imports nothing.
GRADED_MODULES = ("ops", "vision", "text", "bridge", "heads", "model", "tokenizer",
                  "backward.ops", "backward.text", "backward.bridge", "backward.heads")


def check(component, /, **functions):
    """Grade functions written in a notebook: check("softmax", softmax=my_softmax) (see notebook.py)."""
    from .notebook import check as _check  # lazy: importing the package stays light

    return _check(component, **functions)
