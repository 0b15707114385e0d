"""A byte-level BPE tokenizer trained on a corpus (Hugging Face ``tokenizers``), saved so that
``AutoTokenizer.from_pretrained`` loads it beside the model it was trained for."""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"    # document separator, and the first token every text is scored after
PAD = "<pad>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast`` (ids 0: pad, 1: eos)."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)

