"""BridgeTowerProcessor: a photo and a sentence → the four arrays the model takes (bridgetower.md §9).

It only routes: images to BridgeTowerImageProcessor, text to RobertaTokenizer, and checks that
the two batches pair up (one caption per image).
"""

from .image_processing import BatchFeature, BridgeTowerImageProcessor, as_image_list
from .tokenizer import RobertaTokenizer


class BridgeTowerProcessor:
    """images + text → BatchFeature(input_ids [B, T], attention_mask [B, T], pixel_values [B, 3, c, c],
    pixel_mask [B, c, c]), ready for `model(**enc)`."""

    def __init__(self, image_processor, tokenizer):
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    def __repr__(self):
        return f"BridgeTowerProcessor({self.image_processor!r}, vocab_size={self.tokenizer.vocab_size})"

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None):
        """Load preprocessor_config.json and tokenizer.json (or vocab.json + merges.txt) from a folder
        or a Hub repo id."""
        from .hub import resolve

        folder = resolve(name_or_path, revision, cache_dir, weights=False)
        return cls(BridgeTowerImageProcessor.from_pretrained(folder), RobertaTokenizer.from_pretrained(folder))

    def __call__(self, images=None, text=None, padding=False, truncation=False, max_length=None,
                 return_tensors="np"):
        """Process images, text or both (images first, as in transformers 5).

        Like the reference, texts are not padded unless asked: a batch of captions of different
        lengths needs padding=True. A text over 512 tokens is an error unless truncation=True.
        """
        if images is None and text is None:
            raise ValueError("pass images, text, or both")
        out = BatchFeature()
        if text is not None:
            out.update(self.tokenizer(text, padding=padding, truncation=truncation, max_length=max_length,
                                      return_tensors=return_tensors))
        if images is not None:
            image_list = as_image_list(images)
            if text is not None:
                n_texts = 1 if isinstance(text, str) else len(text)
                if n_texts != len(image_list):
                    raise ValueError(
                        f"got {n_texts} text(s) and {len(image_list)} image(s); BridgeTower scores one text "
                        "against one image, so pass as many of each (repeat an image to try several captions)")
            out.update(self.image_processor(image_list, return_tensors=return_tensors))
        return out

    def decode(self, ids, skip_special_tokens=False):
        """The tokenizer's decode."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens=False):
        """The tokenizer's batch_decode."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)
