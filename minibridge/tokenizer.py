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
import heapq
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
# Words this long or longer are not cached, so one entry stays small (a hostile 100,000-letter word
# would otherwise sit in the cache); long words rarely repeat anyway. The reference's MAX_LENGTH,
# which it counts in UTF-8 bytes of the word's printable spelling, as we do.
BPE_CACHE_MAX_WORD_BYTES = 256


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

    Start from single characters and repeatedly merge the adjacent pair with the lowest rank (the
    earliest-learned merge; of equal pairs, the leftmost), until no adjacent pair is a known merge.
    bpe("Ġlower", ranks) might go Ġ l o w e r → Ġ lo w e r → Ġ low e r → Ġ low er → Ġlow er → Ġlower.
    Merging in rounds (every occurrence of the best pair, left to right without overlap, then look
    again) gives the same symbols on every trained merges table.
    """
    # BEGIN SOLUTION
    # Looking again for the best pair after every merge costs O(n²): minutes for a 100,000-letter word.
    # Here a heap holds the candidate merges as (rank, position): the lowest pops in O(log n), and a
    # merge changes only the two pairs beside it, so it pushes at most two candidates: O(n log n) in
    # all. A candidate whose symbols a later merge changed is stale, and skipped when popped.
    # subtle: this is the reference's order (`tokenizers`' Word::merge_all). It equals merging in rounds
    #   whenever a pair holding a merged symbol ranks after the merge that made it, as in every trained
    #   table (a pair is learned only once its symbols exist); where that fails, the heap's is the reference's.
    symbols = list(word)  # symbols[i]: the symbol that starts at character i; None once merged into its left
    n = len(symbols)
    after = list(range(1, n + 1))  # after[i]: where the next symbol starts (n: none)
    before = list(range(-1, n - 1))  # before[i]: where the previous symbol starts (-1: none)
    queue = []  # candidate merges (rank, i): the pair of symbols[i] and the symbol after it

    def push(i):
        """Queue the pair that starts at symbol i, if there is one and it is a known merge."""
        if i >= 0 and after[i] < n:
            rank = ranks.get((symbols[i], symbols[after[i]]))
            if rank is not None:
                heapq.heappush(queue, (rank, i))

    for i in range(n - 1):
        push(i)
    while queue:
        rank, i = heapq.heappop(queue)  # the lowest rank; of equal ranks, the leftmost
        j = after[i]
        # subtle: skip a stale candidate: symbol i was merged away, or a merge since it was queued
        #   grew symbol i or the one after it, so the pair there is another (of another rank).
        if symbols[i] is None or j == n or ranks.get((symbols[i], symbols[j])) != rank:
            continue
        symbols[i], symbols[j] = symbols[i] + symbols[j], None  # merge the right symbol into the left
        after[i] = after[j]
        if after[i] < n:
            before[after[i]] = i
        push(before[i])  # the two pairs the merged symbol now makes with its neighbours
        push(i)
    return [s for s in symbols if s is not None]
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
        self._cache = {}  # {word: ids}, at most BPE_CACHE_SIZE entries, of short words only

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
            return cls(_read_vocab_json(folder / "vocab.json"), _read_merges_txt(folder / "merges.txt"))
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
            if len(self._cache) < BPE_CACHE_SIZE and len(word.encode("utf-8")) < BPE_CACHE_MAX_WORD_BYTES:
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
        texts = [_check_text(text)] if single else _check_text_list(text)
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
def _check_text(text, name="text"):
    """text, if it is a str of valid Unicode; name: what to call it in an error ("text", "text[3]")."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            # subtle: the reference (tokenizers) refuses such a str too, with a bare TypeError. We keep
            # the UnicodeEncodeError (a ValueError) and say which text, where, and what was expected.
            raise UnicodeEncodeError("utf-8", text, err.start, err.end, (
                f"{name} holds a lone surrogate, which is not valid Unicode; expected text with a UTF-8 form "
                "(if it came from bytes, decode them with errors='replace')")) from None
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
        _check_text(t, f"text[{k}]")
    return list(texts)


def _check_lengths(bodies, limit, is_model_limit):
    for k, body in enumerate(bodies):
        n = len(body) + 2
        if n > limit:
            what = "the model's limit" if is_model_limit else "max_length"
            raise ValueError(
                f"text {k} is {n} tokens long (with <s> and </s>), over {what} of {limit}; "
                f"truncate it to {limit} tokens (truncation=True, or --truncation on the command line)")


def pad_ids(rows, pad_id):
    """Token-id lists → (input_ids [b, T], attention_mask [b, T]), padded on the right to the longest."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for k, r in enumerate(rows):
        ids[k, :len(r)], mask[k, :len(r)] = r, 1
    return ids, mask


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
class TokenizerFileError(ValueError):
    """A tokenizer file that is not what it should be; the message names the file and the field."""


def _read_tokenizer_json(path):
    """Arguments for RobertaTokenizer from a `tokenizers` tokenizer.json, refusing what it cannot do."""
    spec = _read_json(path, "a tokenizer.json as the `tokenizers` library writes it")
    model = _field(spec, "model", dict, path)
    _refuse(model.get("type", "BPE") != "BPE", f"model type {model.get('type')!r} (only BPE)")
    _refuse(model.get("dropout") not in (None, 0, 0.0), "BPE dropout")
    _refuse(bool(model.get("continuing_subword_prefix")) or bool(model.get("end_of_word_suffix")),
            "continuing_subword_prefix / end_of_word_suffix")
    _refuse(bool(model.get("ignore_merges")), "ignore_merges")
    _refuse(spec.get("normalizer") is not None, f"normalizer {spec.get('normalizer')}")
    pre = _field(spec, "pre_tokenizer", dict, path, default={})
    _refuse(pre.get("type") != "ByteLevel", f"pre_tokenizer {pre.get('type')!r} (only ByteLevel)")
    _refuse(bool(pre.get("add_prefix_space")), "ByteLevel add_prefix_space=True")
    _refuse(not pre.get("use_regex", True), "ByteLevel use_regex=False")
    # The file's "truncation"/"padding" defaults are ignored: transformers overrides them per call.
    vocab = _check_vocab(_field(model, "vocab", dict, path, "model."), path, "model.vocab")
    merges = [_merge_pair(m, path, f"model.merges[{k}]")
              for k, m in enumerate(_field(model, "merges", list, path, "model."))]
    added = []
    for k, t in enumerate(_field(spec, "added_tokens", list, path, default=[])):
        t = _typed(t, dict, path, f"added_tokens[{k}]")
        content = _field(t, "content", str, path, f"added_tokens[{k}].")
        _refuse(t.get("single_word", False), f"single_word added token {content!r}")
        added.append(AddedToken(content, _field(t, "id", int, path, f"added_tokens[{k}]."), t.get("special", False),
                                t.get("lstrip", False), t.get("rstrip", False), t.get("normalized", True)))
    post = _field(spec, "post_processor", dict, path, default={})
    _refuse(post.get("type", "RobertaProcessing") != "RobertaProcessing", f"post_processor {post.get('type')!r}")
    bos, eos = _framing_token(post, "cls", "<s>", path), _framing_token(post, "sep", "</s>", path)
    return dict(vocab=vocab, merges=merges, added_tokens=added, bos_token=bos, eos_token=eos)


def _framing_token(post, key, default, path):
    """The token of the post-processor's "cls" or "sep" entry (written ["<s>", 0]), default if absent."""
    entry = _field(post, key, list, path, "post_processor.", default=[default])
    return _typed(entry[0] if entry else None, str, path, f"post_processor.{key}[0]")


def _read_vocab_json(path):
    """{token: id} from a vocab.json."""
    return _check_vocab(_read_json(path, "a vocab.json: one JSON object of token → id"), path, "the vocabulary")


def _read_merges_txt(path):
    """[(left, right), …] from a merges.txt: one "left right" line per merge, in rank order."""
    merges = []
    # subtle: lines end at "\n" only, as in the reference; str.splitlines would also cut at \x1c, \x85, …
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if line and not line.startswith("#version"):
            merges.append(_merge_pair(line, path, f"line {number}", '"left right" (one space between)'))
    return merges


def _read_text(path):
    """The text of a UTF-8 file, or a TokenizerFileError naming the file and the first bad byte."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TokenizerFileError(f"{path}: byte {err.start} (0x{err.object[err.start]:02x}) is not UTF-8; "
                                 "expected a UTF-8 text file") from None


def _read_json(path, what):
    """The JSON object in a file; what: what the file should be, for the error message."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise TokenizerFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                                 f"expected {what}") from None
    return _typed(data, dict, path, "the top level", f"an object ({what})")


_KINDS = {dict: "an object", list: "an array", str: "a string", int: "an integer"}


def _typed(value, kind, path, name, expected=None):
    """value, if it is a `kind` (dict, list, str or int); else an error naming the file and the field."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 60 else shown[:60] + "…"
        raise TokenizerFileError(f"{path}: {name} should be {expected or _KINDS[kind]}, got {shown}")
    return value


def _field(obj, key, kind, path, where="", default=None):
    """obj[key] checked with _typed; default (if given) when it is absent or null."""
    if obj.get(key) is None:
        if default is None:
            raise TokenizerFileError(f'{path}: no "{where}{key}" field; expected {_KINDS[kind]} there')
        return default
    return _typed(obj[key], kind, path, where + key)


def _check_vocab(vocab, path, name):
    """vocab, if every id is an integer ≥ 0 (JSON keys are always strings)."""
    for token, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise TokenizerFileError(f"{path}: {name}[{token!r}] should be a token id (an integer ≥ 0), "
                                     f"got {json.dumps(i)}")
    return vocab


def _merge_pair(merge, path, name, forms='"left right" or ["left", "right"]'):
    """(left, right) from a merge written "left right" (or ["left", "right"] in tokenizer.json)."""
    parts = merge.split(" ") if isinstance(merge, str) else merge
    if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) and p for p in parts)):
        raise TokenizerFileError(f"{path}: {name} should be a merge, two symbols: {forms}; got {merge!r}")
    return tuple(parts)


def _roberta_added_tokens(vocab):
    """RoBERTa's five special tokens; <mask> strips the whitespace on its left (bridgetower.md §9)."""
    return [AddedToken(t, vocab[t], special=True, lstrip=(t == "<mask>"))
            for t in ROBERTA_SPECIAL_TOKENS if t in vocab]


def _refuse(condition, what):
    if condition:
        raise ValueError(f"tokenizer.json uses {what}, which minibridge's RobertaTokenizer does not implement")
