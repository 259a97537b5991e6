"""The repository's documents tell the truth: every `bridgetower.md §N` and `habit N` the code cites
resolves to a heading or habit inside the repository, and the README's line counts are `wc -l`'s."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bridgetower.md"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"


def cited_files():
    """Every text file of the repository that may cite a section or a habit."""
    files = [ROOT / "README.md", CONTRIBUTING, DOC]
    for folder in ("minibridge", "tests", "notebooks", "benchmarks", "docs"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".ipynb")
                  and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    return sorted(set(files))


def test_every_section_cited_is_a_heading_of_the_description():
    headings = set(re.findall(r"^#+ (\d+(?:\.\d+)?)[. ]", DOC.read_text(encoding="utf-8"), flags=re.M))
    assert {"1", "1.3", "5", "7.3", "10.3", "12"} <= headings, sorted(headings)  # the parser finds them
    cited = 0
    for path in cited_files():
        text = path.read_text(encoding="utf-8")
        assert "SPEC" + " §" not in text, f"{path.relative_to(ROOT)} cites SPEC, which is not in the repository"
        own = path == DOC  # the description cites its own sections as plain §N
        for match in re.finditer(r"bridgetower\.md §(\d+(?:\.\d+)?)(?:\s*-\s*(\d+))?" if not own
                                 else r"§(\d+(?:\.\d+)?)(?:\s*-\s*(\d+))?", text):
            first, last = match.group(1), match.group(2)
            for section in [first] + ([str(n) for n in range(int(first) + 1, int(last) + 1)] if last else []):
                cited += 1
                line = text[: match.start()].count("\n") + 1
                assert section in headings, f"{path.relative_to(ROOT)}:{line} cites §{section}, not a heading of {DOC.name}"
    assert cited > 40  # the code does cite it


def test_every_habit_cited_is_in_contributing():
    habits = set(re.findall(r"^(\d+)\. \*\*", CONTRIBUTING.read_text(encoding="utf-8"), flags=re.M))
    assert habits == {str(n) for n in range(1, 15)}, sorted(habits)
    for path in cited_files():
        text = path.read_text(encoding="utf-8")
        assert "STYLE" + " habit" not in text, f"{path.relative_to(ROOT)} cites STYLE, which is not in the repository"
        for n in re.findall(r"CONTRIBUTING\.md habit (\d+)", text):
            assert n in habits, f"{path.relative_to(ROOT)} cites habit {n}, which CONTRIBUTING.md does not have"


def readme_line_counts():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("<!-- line-counts -->")[1].split("<!-- /line-counts -->")[0]
    return {row[0].strip("` "): int(row[1]) for row in
            (line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `"))}


def lines_of(path):
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in
               (sorted(path.rglob("*.py")) if path.is_dir() else [path]) if "__pycache__" not in p.parts)


def test_readme_line_counts_are_wc_l():
    counts = readme_line_counts()
    for name, n in counts.items():
        assert lines_of(ROOT / name) == n, f"README says {name} has {n} lines; wc -l says {lines_of(ROOT / name)}"
    listed = {ROOT / name for name in counts}
    package = ROOT / "minibridge"
    unlisted = [p.relative_to(ROOT) for p in package.rglob("*.py") if "__pycache__" not in p.parts
                and p not in listed and not any(d in listed for d in p.parents)]
    assert not unlisted, f"the README's table leaves out {unlisted}"


def test_readme_totals_are_wc_l():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"The forward pass proper \(([^)]*)\) is ([\d,]+) lines of the package's\s+([\d,]+) \((\d+)%\)", text)
    assert match, "the README's sentence with the core's share is gone; update this test"
    core = [f"minibridge/{name.strip()}.py" for name in match.group(1).split(",")]
    core_lines, total = sum(lines_of(ROOT / f) for f in core), lines_of(ROOT / "minibridge")
    assert int(match.group(2).replace(",", "")) == core_lines, f"core: README {match.group(2)}, wc -l {core_lines}"
    assert int(match.group(3).replace(",", "")) == total, f"package: README {match.group(3)}, wc -l {total}"
    assert int(match.group(4)) == round(100 * core_lines / total)


@pytest.mark.parametrize("command", ["python tests/make_fixtures.py", "python tests/make_grad_fixtures.py",
                                     "python tests/make_snapshots.py",
                                     "python tests/make_unicode_tables.py", "python benchmarks/bench.py"])
def test_documented_commands_exist(command):
    script = ROOT / command.split()[1]
    assert script.is_file(), f"{command}: no such file"
    assert command in (ROOT / "README.md").read_text(encoding="utf-8") + CONTRIBUTING.read_text(encoding="utf-8")


# ---- the offline start: two lines of the README ----------------------------------------------------------


def offline_start_lines():
    """The commands in the README's code block after <!-- offline-start -->."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- offline-start -->" in text, "the README's offline start is gone; update this test"
    block = text.split("<!-- offline-start -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


@pytest.mark.slow  # writes the base architecture's 1.4 GB of random weights (about 10 s)
def test_offline_start_gives_a_checkpoint_the_notebooks_load(tmp_path, monkeypatch):
    """Line 1 run as written (only the tokenizer placeholder filled in) from a folder with no network,
    then what line 2 hands the notebooks: a base-shaped checkpoint that loads and runs at 288 pixels."""
    import shlex
    import subprocess
    import sys

    from paths import ROBERTA

    make, launch = offline_start_lines()
    argv = shlex.split(make)
    assert argv[:2] == ["minibridge", "random-checkpoint"] and "--tokenizer" in argv, make
    folder = argv[2]
    assert launch == f"MINIBRIDGE_MODEL={folder} jupyter lab notebooks/", launch
    if not (ROBERTA / "vocab.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    argv[argv.index("--tokenizer") + 1] = str(ROBERTA)  # "path/to/roberta-base": this machine's copy
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "MINIBRIDGE_HOME": str(tmp_path / "no-downloads")}
    r = subprocess.run([sys.executable, "-m", "minibridge", *argv[1:]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert launch in r.stdout  # the command prints the second line itself

    import numpy as np

    import minibridge as mb

    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        import notebook_utils
    finally:
        sys.path.remove(str(ROOT / "notebooks"))
    monkeypatch.setenv("MINIBRIDGE_MODEL", str(tmp_path / folder))
    name = notebook_utils.model_id("BridgeTower/bridgetower-base-itm-mlm")
    assert name == str(tmp_path / folder)
    processor = mb.BridgeTowerProcessor.from_pretrained(name)
    model = mb.BridgeTowerForMaskedLM.from_pretrained(name)
    enc = processor(images=[np.full((400, 300, 3), 128, np.uint8)], text=["a <mask> on a sofa"])
    assert enc["pixel_values"].shape == (1, 3, 288, 288)  # the real crop, an 18 x 18 patch grid
    assert model(**enc).logits.shape == (1, len(enc["input_ids"][0]), 50265)
