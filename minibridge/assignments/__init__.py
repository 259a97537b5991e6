"""Course assignments generated from minibridge's own source (STYLE habit 14: one source for exercises).

    python -m minibridge.assignments build handout/             # the student copy, TODOs in place of solutions
    python -m minibridge.assignments check --impl handout/      # grade it: PASS/FAIL per component, then the score
    python -m minibridge.assignments list                       # the components, tolerances, snapshot sources
    python -m minibridge.assignments snapshot                   # regenerate snapshots.npz (reference extra)

components.py says what is assigned and how each piece is called; build.py writes the student copy
from the `# BEGIN SOLUTION` / `# END SOLUTION` markers in the source; grade.py compares a copy with
snapshots.npz, which snapshot.py computes with torch, transformers and tokenizers. The instructor
guide is notebooks/assignments/README.md.
"""
