"""Builds raywiz/assets/tokenizer: a 2,048-token byte-level BPE for the tiny models.

Trained once on Python source from the standard library plus WizardCoder's prompt, then committed,
so every machine gets the same ids. Re-run only to change it: .venv/bin/python scripts/build_tiny_tokenizer.py
"""

import inspect
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import raywiz.data.template as template

OUT = os.path.join(os.path.dirname(__file__), "..", "raywiz", "assets", "tokenizer")
SPECIALS = ["<|endoftext|>", "<|pad|>"]


def corpus():
    import argparse, collections, heapq, json, string, textwrap, functools, statistics, fractions, bisect
    for module in (argparse, collections, heapq, json, string, textwrap, functools, statistics, fractions, bisect):
        yield inspect.getsource(module)
    yield template.WIZARDCODER_PROMPT * 50
    yield template.ALPACA_INPUT_PROMPT * 10


def main():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|pad|>", model_max_length=1024)
    fast.save_pretrained(OUT)
    print(f"saved {len(fast)} tokens to {os.path.abspath(OUT)}")


if __name__ == "__main__":
    main()
