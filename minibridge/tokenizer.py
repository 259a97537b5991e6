"""RoBERTa byte-level BPE tokenizer, written out from scratch (bridgetower.md §9).

The pipeline, in reading order (each step is a function below):

    "a <mask> cat"
      ─ split out added tokens ─>  ["a", "<mask>", " cat"]   (<mask> absorbs the space on its left)
      ─ pre_tokenize (GPT-2 regex, bytes → printable chars) ─>  ["a"], ["Ġcat"]
      ─ bpe (merge adjacent symbols by rank) ─>  ["a"], ["Ġcat"]
      ─ vocab ─>  [102], [50264], [4758]
      ─ frame ─>  [0, 102, 50264, 4758, 2]                      (<s> … </s>)

It reproduces the `tokenizers` library loading the checkpoint's tokenizer.json, id for id.
Decoding is the exact inverse: no text normalisation, no clean-up of spaces.
"""

import functools
import json
from pathlib import Path

import numpy as np
import regex

from .unicode_classes import LETTERS, NUMBERS

# The text tower has 514 positions and RoBERTa numbers them from pad_id + 1 = 2, so 512 tokens
# (the two framing tokens included) is the longest input its position table can hold.
MODEL_MAX_LENGTH = 512

# GPT-2's pre-tokenisation rule: contractions, then runs of letters, of digits, of other
# symbols (each with at most one leading space), then whitespace. `\s+(?!\S)` leaves the last
# space of a run for the next word, so "a  b" splits as ["a", " ", " b"].
# The rule is usually written with \p{L} (letters) and \p{N} (numbers):
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# subtle: which characters are letters depends on the regex engine's Unicode version. The
#   reference's follows Unicode 16.0, the `regex` package follows its release (17.0 and later add
#   ~4,600 letters), so we spell both classes out as the reference's own code-point ranges
#   (unicode_classes.py, generated from it). For any text written before 2025 the two agree.
# subtle: in `regex`, `\s` is Unicode White_Space, like the Rust/Oniguruma engines of the
#   reference; str.isspace() would also count \x1c-\x1f.
def _char_class(ranges):
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)  # regex escapes, e.g. \U00000041


@functools.cache
def gpt2_split_pattern():
    """GPT-2's rule, compiled on first use (a 0.1 s compile that `import minibridge` need not pay)."""
    L, N = _char_class(LETTERS), _char_class(NUMBERS)
    return regex.compile(rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^\s{L}{N}]+|\s+(?!\S)|\s+""")


@functools.cache
def ascii_split_pattern():
    """The same rule in its usual spelling: equal on ASCII (no Unicode version differs there), 7× faster."""
    return regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def split_words(text):
    """GPT-2's words of a text.  split_words("Hello  world") == ["Hello", " ", " world"]"""
    return (ascii_split_pattern() if text.isascii() else gpt2_split_pattern()).findall(text)

# Words already merged are remembered; the size bound keeps memory flat on endless input
# (the reference's cache has the same capacity, and also stops adding when it is full).
BPE_CACHE_SIZE = 10_000


def bytes_to_unicode():
    """GPT-2's table from each byte 0..255 to a printable character, so a vocabulary of strings can
    hold any byte sequence.  Returns {byte: one-character str}.

    The 188 printable bytes map to themselves; the other 68 (controls, space, NBSP, soft hyphen)
    take the code points 256, 257, … in byte order, e.g. space → 'Ġ' (U+0120), '\\n' → 'Ċ'.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return dict(sorted(table.items()))


BYTE_ENCODER = bytes_to_unicode()  # {byte: char}
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}  # {char: byte}


def pre_tokenize(text):
    """Split text into GPT-2 words and spell each word's UTF-8 bytes with the printable table.

    pre_tokenize("Hello  world") == ["Hello", "Ġ", "Ġworld"]
    """
    return ["".join(BYTE_ENCODER[b] for b in word.encode("utf-8")) for word in split_words(text)]


def bpe(word, ranks):
    """Byte-pair merge one pre-tokenised word.  word: str; ranks: {(left, right): rank}; returns list[str].

    Start from single characters; repeatedly take the adjacent pair with the lowest rank (the
    earliest-learned merge) and merge all its occurrences, left to right; stop when no adjacent
    pair is a known merge.  bpe("Ġlower", ranks) might go Ġ l o w e r → Ġl o w e r → Ġlow e r → Ġlow er.
    """
    # BEGIN SOLUTION
    symbols = list(word)
    while len(symbols) > 1:
        pairs = set(zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break  # no adjacent pair was ever merged in training: done
        merged, i = [], 0
        while i < len(symbols):
            # subtle: left to right and non-overlapping, so "a a a" with merge (a, a) gives "aa a".
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols
    # END SOLUTION


def bpe_steps(word, ranks):
    """The merges `bpe` makes on one word, in order (to show it, merge by merge): [(symbols, merged pair or None, its rank), …].

    It runs the package's own `bpe` with the merge table cut off after each rank that could apply to
    this word, so the steps are bpe's, not a second implementation. (Merges apply in rising rank
    order: a pair can only be learned after the symbols it joins exist, so every cut-off table
    yields a prefix of the full merge sequence.)
    """
    relevant = sorted((rank, pair) for pair, rank in ranks.items() if pair[0] + pair[1] in word)
    steps, table = [(list(word), None, None)], {}
    for rank, pair in relevant:
        table[pair] = rank
        symbols = bpe(word, table)
        if symbols != steps[-1][0]:
            steps.append((symbols, pair, rank))
    return steps


def token_bytes(token):
    """The bytes a vocabulary entry stands for (the inverse of the printable table).

    subtle: an added token may hold characters outside the table (e.g. '€'); the reference's
    decoder then uses the token's own UTF-8 bytes, and so do we.
    """
    if all(ch in BYTE_DECODER for ch in token):
        return bytes(BYTE_DECODER[ch] for ch in token)
    return token.encode("utf-8")


class AddedToken:
    """A token matched in the raw text before pre-tokenisation (<s>, <mask>, …), with its flags."""

    def __init__(self, content, id, special=True, lstrip=False, rstrip=False, normalized=True):
        self.content, self.id, self.special = content, id, special
        self.lstrip, self.rstrip, self.normalized = lstrip, rstrip, normalized

    def __repr__(self):
        return f"AddedToken({self.content!r}, id={self.id}, special={self.special}, lstrip={self.lstrip})"


# RoBERTa's special tokens, used when a folder has vocab.json + merges.txt but no tokenizer.json.
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def split_on_added_tokens(text, pattern, tokens):
    """Cut text around matches of the added tokens.  Returns [(piece, id or None), …] covering text.

    pattern matches the tokens' contents leftmost-longest; tokens is {content: AddedToken}.
    A token with lstrip (RoBERTa's <mask>) swallows the whitespace on its left, rstrip on its
    right, so "a <mask> b" gives [("a", None), (" <mask>", 50264), (" b", None)].
    """
    pieces, done = [], 0  # done: end of the previous match
    for match in pattern.finditer(text):
        token = tokens[match.group()]
        start, stop = match.span()
        if token.lstrip:
            # subtle: never reach back into the previous match ("<mask> <mask>" keeps both).
            start = max(regex.search(r"\s*\Z", text[:start]).start(), done)
        if token.rstrip:
            stop = regex.match(r"\s*", text, pos=stop).end()
        if done < start:
            pieces.append((text[done:start], None))
        pieces.append((text[start:stop], token.id))
        done = stop
    if done < len(text):
        pieces.append((text[done:], None))
    return pieces


def _alternation(contents):
    """A regex matching any of the strings leftmost-longest (longest alternative tried first)."""
    if not contents:
        return None
    return regex.compile("|".join(regex.escape(c) for c in sorted(contents, key=len, reverse=True)))


class BatchEncoding(dict):
    """The tokenizer's output: a dict ({"input_ids": …, "attention_mask": …}) with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class RobertaTokenizer:
    """RoBERTa's byte-level BPE with `<s> … </s>` framing, as the BridgeTower checkpoints use it.

    vocab: {token: id}; merges: [(left, right), …] in rank order; added_tokens: [AddedToken, …].
    """

    def __init__(self, vocab, merges, added_tokens=None, bos_token="<s>", eos_token="</s>",
                 pad_token="<pad>", model_max_length=MODEL_MAX_LENGTH):
        self.vocab = dict(vocab)
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        if added_tokens is None:
            added_tokens = _roberta_added_tokens(self.vocab)
        self.added_tokens = {t.content: t for t in added_tokens}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.id_to_token.update({t.id: t.content for t in added_tokens})
        self.special_ids = {t.id for t in added_tokens if t.special}
        # subtle: the reference looks for tokens flagged normalized=False first, then for the others
        # in what is left; that equals one pass over all of them unless tokens of the two groups overlap.
        self._added_passes = [
            _alternation([t.content for t in added_tokens if not t.normalized]),
            _alternation([t.content for t in added_tokens if t.normalized]),
        ]
        self.bos_token_id = self._id_of(bos_token)
        self.eos_token_id = self._id_of(eos_token)
        self.pad_token_id = self._id_of(pad_token)
        self.model_max_length = model_max_length
        self._cache = {}  # {word: ids}, at most BPE_CACHE_SIZE entries

    def __repr__(self):
        return f"RobertaTokenizer(vocab_size={self.vocab_size}, merges={len(self.ranks)})"

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None):
        """Load from a folder (or Hub repo id) holding tokenizer.json (as the BridgeTower repos ship)
        or vocab.json + merges.txt."""
        from .hub import resolve

        folder = resolve(name_or_path, revision, cache_dir, weights=False)
        if (folder / "tokenizer.json").is_file():
            return cls(**_read_tokenizer_json(folder / "tokenizer.json"))
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            return cls(vocab, _read_merges_txt(folder / "merges.txt"))
        raise FileNotFoundError(f"{folder} has neither tokenizer.json nor vocab.json + merges.txt")

    def _id_of(self, token):
        if token in self.added_tokens:
            return self.added_tokens[token].id
        if token in self.vocab:
            return self.vocab[token]
        raise ValueError(f"special token {token!r} is not in the vocabulary")

    @property
    def mask_token_id(self):
        """The id of <mask> (50264 in RoBERTa's vocabulary)."""
        return self._id_of("<mask>")

    @property
    def vocab_size(self):
        return len(self.id_to_token)

    # ---------------------------------------------------------------- encoding
    def _word_ids(self, word):
        """BPE ids of one pre-tokenised word, through the bounded cache."""
        ids = self._cache.get(word)
        if ids is None:
            symbols = bpe(word, self.ranks)
            try:
                ids = [self.vocab[s] for s in symbols]
            except KeyError as err:
                raise ValueError(f"BPE produced {err.args[0]!r}, which is not in the vocabulary") from None
            if len(self._cache) < BPE_CACHE_SIZE:
                self._cache[word] = ids
        return ids

    def _split(self, text):
        """[(piece, added-token id or None), …] after both added-token passes."""
        pieces = [(text, None)]
        for pattern in self._added_passes:
            if pattern is None:
                continue
            cut = []
            for piece, added_id in pieces:
                if added_id is None:  # plain text: look for added tokens in it
                    cut.extend(split_on_added_tokens(piece, pattern, self.added_tokens))
                else:
                    cut.append((piece, added_id))
            pieces = cut
        return pieces

    def tokenize(self, text):
        """The tokens of text, without <s> … </s>.  tokenize("Hello world") == ["Hello", "Ġworld"]"""
        return [self.id_to_token[i] for i in self._encode_body(_check_text(text))]

    def _encode_body(self, text):
        """Ids of text without the framing tokens."""
        ids = []
        for piece, added_id in self._split(text):
            if added_id is not None:
                ids.append(added_id)
            else:
                for word in pre_tokenize(piece):
                    ids.extend(self._word_ids(word))
        return ids

    def encode(self, text):
        """Ids of text framed as <s> text </s>, like the reference.  Not truncated and not
        length-checked: the 512-token limit is enforced by __call__, which feeds the model."""
        return [self.bos_token_id, *self._encode_body(_check_text(text)), self.eos_token_id]

    def __call__(self, text, padding=False, truncation=False, max_length=None, return_tensors=None):
        """Tokenise a text or a list of texts for the model.

        padding: False | True / "longest" (to the longest text) | "max_length" (to max_length,
        default 512).  truncation: cut texts to max_length (default 512), keeping the final </s>.
        return_tensors: None (lists) or "np" (int64 arrays [B, T]).
        Returns a BatchEncoding with input_ids and attention_mask (1 on tokens, 0 on padding).
        """
        single = isinstance(text, str)
        texts = [text] if single else _check_text_list(text)
        limit = self.model_max_length if max_length is None else max_length
        bodies = [self._encode_body(t) for t in texts]
        if truncation:
            if limit < 2:
                raise ValueError(f"max_length={limit} leaves no room for the <s> and </s> tokens; use at least 2")
            bodies = [b[:limit - 2] for b in bodies]  # cut the text, then frame: </s> stays last
        else:
            _check_lengths(bodies, limit, max_length is None)
        ids = [[self.bos_token_id, *b, self.eos_token_id] for b in bodies]
        masks = [[1] * len(x) for x in ids]
        target = _padded_length(padding, ids, limit)
        if target is not None:
            masks = [m + [0] * (target - len(m)) for m in masks]
            ids = [x + [self.pad_token_id] * (target - len(x)) for x in ids]
        return BatchEncoding(input_ids=_as_output(ids, single, return_tensors),
                             attention_mask=_as_output(masks, single, return_tensors))

    # ---------------------------------------------------------------- decoding
    def decode(self, ids, skip_special_tokens=False):
        """Text of a sequence of ids (list or 1-D array): the exact inverse of encode.

        Bytes that do not form valid UTF-8 (e.g. half of an emoji) become U+FFFD, as in the reference.
        """
        data = bytearray()
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if i not in self.id_to_token:
                raise ValueError(f"id {i} is not in the vocabulary (0 … {max(self.id_to_token)})")
            if skip_special_tokens and i in self.special_ids:
                continue
            data += token_bytes(self.id_to_token[i])
        return data.decode("utf-8", errors="replace")

    def batch_decode(self, sequences, skip_special_tokens=False):
        """decode for each row of a list of id lists or a [B, T] array."""
        return [self.decode(ids, skip_special_tokens) for ids in sequences]


# -------------------------------------------------------------------- helpers of __call__
def _check_text(text):
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        raise TypeError("text must be a str, got bytes; decode it first, e.g. data.decode('utf-8')")
    raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")


def _check_text_list(texts):
    if not isinstance(texts, (list, tuple)):
        _check_text(texts)  # raises the TypeError naming what came
    if len(texts) == 0:
        raise ValueError("got an empty list of texts; pass at least one text (an empty string is fine)")
    for k, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text[{k}] must be a str, got {type(t).__name__}")
    return list(texts)


def _check_lengths(bodies, limit, is_model_limit):
    for k, body in enumerate(bodies):
        n = len(body) + 2
        if n > limit:
            what = "the model's limit" if is_model_limit else "max_length"
            raise ValueError(
                f"text {k} is {n} tokens long (with <s> and </s>), over {what} of {limit}; "
                f"pass truncation=True to cut it to {limit} tokens")


def _padded_length(padding, ids, limit):
    """Length to pad every row to, or None for no padding."""
    if padding is False or padding == "do_not_pad":
        return None
    if padding is True or padding == "longest":
        return max(len(x) for x in ids)
    if padding == "max_length":
        return max(limit, max(len(x) for x in ids))
    raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")


def _as_output(rows, single, return_tensors):
    if return_tensors is None:
        return rows[0] if single else rows
    if return_tensors != "np":
        raise ValueError(f"return_tensors must be None or 'np' (minibridge computes in NumPy), got {return_tensors!r}")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(f"texts have different lengths {lengths} and cannot form one array; pass padding=True")
    return np.array(rows, dtype=np.int64)  # [B, T]


# -------------------------------------------------------------------- file formats
def _read_tokenizer_json(path):
    """Arguments for RobertaTokenizer from a `tokenizers` tokenizer.json, refusing what it cannot do."""
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    model = spec["model"]
    _refuse(model.get("type", "BPE") != "BPE", f"model type {model.get('type')!r} (only BPE)")
    _refuse(model.get("dropout") not in (None, 0, 0.0), "BPE dropout")
    _refuse(bool(model.get("continuing_subword_prefix")) or bool(model.get("end_of_word_suffix")),
            "continuing_subword_prefix / end_of_word_suffix")
    _refuse(bool(model.get("ignore_merges")), "ignore_merges")
    _refuse(spec.get("normalizer") is not None, f"normalizer {spec.get('normalizer')}")
    pre = spec.get("pre_tokenizer") or {}
    _refuse(pre.get("type") != "ByteLevel", f"pre_tokenizer {pre.get('type')!r} (only ByteLevel)")
    _refuse(bool(pre.get("add_prefix_space")), "ByteLevel add_prefix_space=True")
    _refuse(not pre.get("use_regex", True), "ByteLevel use_regex=False")
    # The file's "truncation"/"padding" defaults are ignored: transformers overrides them per call.
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    added = []
    for t in spec.get("added_tokens", []):
        _refuse(t.get("single_word", False), f"single_word added token {t['content']!r}")
        added.append(AddedToken(t["content"], t["id"], t.get("special", False), t.get("lstrip", False),
                                t.get("rstrip", False), t.get("normalized", True)))
    post = spec.get("post_processor") or {}
    _refuse(post.get("type", "RobertaProcessing") != "RobertaProcessing", f"post_processor {post.get('type')!r}")
    bos, eos = post.get("cls", ["<s>"])[0], post.get("sep", ["</s>"])[0]
    return dict(vocab=model["vocab"], merges=merges, added_tokens=added, bos_token=bos, eos_token=eos)


def _read_merges_txt(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]


def _roberta_added_tokens(vocab):
    """RoBERTa's five special tokens; <mask> strips the whitespace on its left (bridgetower.md §9)."""
    return [AddedToken(t, vocab[t], special=True, lstrip=(t == "<mask>"))
            for t in ROBERTA_SPECIAL_TOKENS if t in vocab]


def _refuse(condition, what):
    if condition:
        raise ValueError(f"tokenizer.json uses {what}, which minibridge's RobertaTokenizer does not implement")
