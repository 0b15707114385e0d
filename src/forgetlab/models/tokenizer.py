"""A byte-level tokenizer for models built from a config: no files, no downloads, any language."""
from __future__ import annotations


class ByteTokenizer:
    """Token ids are UTF-8 bytes shifted by the special tokens: 0 pad, 1 bos, 2 eos."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    vocab_size = 256 + 3
    name = "bytes"

    def encode_batch(self, texts: list[str], max_length: int) -> list[list[int]]:
        return [[self.bos_token_id] + [b + 3 for b in t.encode("utf-8")[: max_length - 1]] for t in texts]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")
