"""What the grader says: the notebook API `check`, the failing case it names, its hints, and the
tolerances (every correct float32 formulation passes, the typical mistakes fail).

Functions are graded through `check` exactly as a notebook would: on the stored snapshots, against
the reference's outputs, so each test here can fail.
"""

import numpy as np
import pytest

from minibridge.assignments import check


def textbook_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- the notebook API ---------------------------------------------------------------------------------


def test_check_passes_a_correct_function_and_prints_the_grader_line(capsys):
    result = check("softmax", softmax=textbook_softmax)
    assert result.passed, result.message
    assert capsys.readouterr().out.startswith("PASS  softmax  worst error ")


def test_check_fails_a_wrong_function_with_mine_vs_reference(capsys):
    result = check("softmax", softmax=lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True))
    assert not result.passed
    out = capsys.readouterr().out
    assert out.startswith("FAIL  softmax  y") and " vs reference " in out


def test_check_turns_the_learners_exceptions_into_fail_lines(capsys):
    def my_softmax(x):
        raise NotImplementedError("my TODO")

    assert not check("softmax", softmax=my_softmax).passed
    assert "not implemented: my TODO" in capsys.readouterr().out

    def my_pooler(p, features):
        return features.no_such_attribute

    result = check("heads", pooler=my_pooler)
    assert not result.passed and "AttributeError" in result.message
    assert "test_grader_diagnostics.py:" in result.message and "in my_pooler)" in result.message, result.message
    assert not check("softmax", softmax=lambda x: x[..., :-1]).passed  # a wrong shape
    assert "shape mine" in capsys.readouterr().out


def test_check_fills_the_functions_not_given_with_the_reference():
    assert check("heads").passed
    assert not check("heads", itm_logits=lambda p, pooled: pooled @ p["fc"]["weight"].T).passed  # no bias


@pytest.mark.parametrize("component, keywords, match", [
    ("no_such_component", {}, "choose from"),
    ("heads", {"softmax": textbook_softmax}, "pooler"),
    ("softmax", {"sofmax": textbook_softmax}, "softmax"),
])
def test_check_refuses_unknown_components_and_keywords(component, keywords, match):
    with pytest.raises(ValueError, match=match):
        check(component, **keywords)
