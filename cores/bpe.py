"""Byte-level BPE for the baseline, trained with the Hugging Face ``tokenizers`` library.

Bytes are mapped one-to-one to the 256 Latin-1 characters (the initial alphabet), so every byte
string encodes, every token is a byte string and ``decode(encode(b)) == b``. Pre-tokenisation is a
GPT-2 style regex split. ``tokenizers`` is imported lazily (optional dependency, extra ``eval``).
"""
from __future__ import annotations

import json

SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _lib():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the BPE baseline needs the `tokenizers` package "
                          "(pip install 'tokenizers>=0.15' or the project's [eval] extra)") from e
    return tokenizers


def train_bpe(data: bytes, vocab_size: int) -> str:
    """Train a BPE tokenizer on ``data`` -> its JSON serialisation (deterministic for given data)."""
    tk = _lib()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(SPLIT_PATTERN), behavior="isolated")
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                     initial_alphabet=[chr(i) for i in range(256)])
    tok.train_from_iterator([data.decode("latin-1")], trainer=trainer)
    return tok.to_str()


class BpeCodec:
    """Encode bytes to token ids and back with a trained tokenizer JSON."""

    def __init__(self, tokenizer_json: str):
        tk = _lib()
        self.json = tokenizer_json
        self.tok = tk.Tokenizer.from_str(tokenizer_json)
        vocab = json.loads(tokenizer_json)["model"]["vocab"]
        self.id_to_bytes: list[bytes] = [b""] * (max(vocab.values()) + 1)
        for s, i in vocab.items():
            self.id_to_bytes[i] = s.encode("latin-1")

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_bytes)

    def encode(self, data: bytes) -> list[int]:
        return self.tok.encode(data.decode("latin-1")).ids

    def decode(self, ids) -> bytes:
        return b"".join(self.id_to_bytes[int(i)] for i in ids)
