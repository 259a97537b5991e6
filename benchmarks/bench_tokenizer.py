"""Tokenizer throughput: minibridge's pure-Python BPE vs the Rust `tokenizers` library, on the 105
COCO captions of the shared test data (tests/paths.py). Not a test; run `python benchmarks/bench_tokenizer.py`.

Two numbers for ours: a cold pass (fresh tokenizer, every word goes through the BPE loop) and a warm
pass (words come from the bounded cache), which is what a long run sees.
"""

import csv
import sys
from pathlib import Path

from minibridge.tokenizer import RobertaTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench import median_time  # noqa: E402  (beside this file)
from paths import SHARED_DATA as DATA  # noqa: E402
REPEATS = 20


def captions():
    with open(DATA / "captions" / "coco_captions.tsv", encoding="utf-8") as f:
        return [row["caption"] for row in csv.DictReader(f, delimiter="\t")]


def main():
    if not (DATA / "roberta-base" / "tokenizer.json").is_file():
        sys.exit(f"shared data not found at {DATA}")
    texts = captions() * REPEATS
    n_chars = sum(map(len, texts))

    load = median_time(lambda: RobertaTokenizer.from_pretrained(DATA / "roberta-base"), 1)
    ours = RobertaTokenizer.from_pretrained(DATA / "roberta-base")

    def cold_pass():  # every word through the BPE loop: empty the cache first
        ours._cache.clear()
        for t in texts[:len(texts) // REPEATS]:
            ours.encode(t)

    cold = median_time(cold_pass) * REPEATS  # scaled to the same number of texts
    warm = median_time(lambda: [ours.encode(t) for t in texts])
    print(f"{len(texts)} captions ({len(texts) // REPEATS} distinct), {n_chars} characters; load {load * 1e3:.0f} ms")
    print(f"minibridge  cold {len(texts) / cold:9.0f} texts/s   warm (cached words) {len(texts) / warm:9.0f} texts/s")
    try:
        import tokenizers
    except ImportError:
        print("tokenizers is not installed: no ratio")
        return
    ref = tokenizers.Tokenizer.from_file(str(DATA / "roberta-base" / "tokenizer.json"))
    one_by_one = median_time(lambda: [ref.encode(t) for t in texts])
    batched = median_time(lambda: ref.encode_batch(texts))
    print(f"tokenizers  one by one {len(texts) / one_by_one:9.0f} texts/s   "
          f"encode_batch {len(texts) / batched:9.0f} texts/s")
    print(f"time ratio minibridge / tokenizers (one by one): "
          f"cold {cold / one_by_one:.1f}x, warm {warm / one_by_one:.1f}x")


if __name__ == "__main__":
    main()
