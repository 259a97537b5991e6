"""Where the project's test data lives: defined here once, for the tests and the benchmarks.

FIXTURES: the committed parity fixtures (tests/fixtures, made by tests/make_fixtures.py).
SHARED_DATA: the real tokenizer files, photos and captions, kept *outside* the repository in
../shared/data beside the checkout (never committed); tests that need them skip when absent.
"""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROBERTA = SHARED_DATA / "roberta-base"  # tokenizer.json, vocab.json, merges.txt of roberta-base
PHOTOS = SHARED_DATA / "images"
