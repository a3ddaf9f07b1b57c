"""The built-in tokenizer of synthetic models: byte-level, no download.

Every byte is one token (so a synthetic model's input length in tokens equals the
prompt's UTF-8 length; use synthetic prompts of given token lengths for exact
shapes). The vocabulary is padded with decodable filler tokens up to the model's
vocabulary size, so any id a random-weight model samples decodes to text.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIALS = (BOS, EOS, PAD)
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2


@lru_cache(maxsize=8)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for tok in SPECIALS:
        vocab[tok] = len(vocab)
    for ch in alphabet:
        vocab[ch] = len(vocab)
    letters = [c for c in alphabet if c.isascii() and c.isalnum()]
    length = 2
    while len(vocab) < vocab_size:
        for combo in itertools.product(letters, repeat=length):
            if len(vocab) >= vocab_size:
                break
            vocab.setdefault("\u0120" + "".join(combo), len(vocab))  # "Ġ" + letters: decodes to " xy"
        length += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return tok.to_str()


class TextTokenizer:
    """The little a backend needs from a tokenizer: encode, decode and special ids."""

    def __init__(self, encode, decode, *, bos_id, eos_id, pad_id, vocab_size, name):
        self._encode, self._decode = encode, decode
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.vocab_size = vocab_size
        self.name = name

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def decode(self, ids) -> str:
        return self._decode(list(ids))


def builtin_tokenizer(vocab_size: int) -> TextTokenizer:
    """The built-in byte-level tokenizer with `vocab_size` entries (about 1 s for 128 k)."""
    from tokenizers import Tokenizer

    if vocab_size < 256 + len(SPECIALS):
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level tokenizer")
    tok = Tokenizer.from_str(_tokenizer_json(vocab_size))
    return TextTokenizer(lambda t: tok.encode(t, add_special_tokens=False).ids,
                         lambda ids: tok.decode(ids, skip_special_tokens=True),
                         bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, vocab_size=vocab_size,
                         name="joulebench-bytelevel")


def save_builtin_tokenizer(vocab_size: int, directory) -> None:
    """Write tokenizer.json and tokenizer_config.json (loadable by transformers and vLLM)."""
    import json
    from pathlib import Path

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_text(_tokenizer_json(vocab_size))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
        "pad_token": PAD, "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False,
    }, indent=1))
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}))


def hf_tokenizer(tok, name: str) -> TextTokenizer:
    """Adapt a transformers tokenizer."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return TextTokenizer(lambda t: tok(t, add_special_tokens=True)["input_ids"],
                         lambda ids: tok.decode(ids, skip_special_tokens=True),
                         bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=pad,
                         vocab_size=len(tok), name=name)
