"""Build the tiny GPT-2 the example server (and the service tests) run: offline, in well under a second.

A byte-level BPE tokenizer is trained on a few KB of text written below, and a GPT-2 with random weights
(seeded, so every build is the same model) is saved next to it:

    python build_model.py DIR

The model is 2 layers of 64 dimensions (about 190k parameters, under 1 MB): small enough that a forward pass
takes about a millisecond on one CPU core, which keeps tests fast; its output is gibberish but deterministic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# A few KB of plain English to train the tokenizer on: enough for merges of common words, nothing to download.
_TEXT = """\
The pool keeps every GPU busy. Teams submit training jobs, notebooks and inference services; the scheduler
queues them fairly by quota, shares GPUs and shows why a job waits. A service scales to zero when idle and
wakes on the next request, so the GPU goes back to the pool. The capital of France is Paris. The quick brown
fox jumps over the lazy dog. Hello, how are you today? I am fine, thank you. What is the weather like?
It is sunny and warm. Tell me a story about a dragon who learned to share. Once upon a time there was a model
that answered every question with a short sentence. user: hello assistant: hi there, how can I help you?
"""
VOCAB_SIZE = 512  # ~360 merges are learnable from _TEXT; 512 leaves room without empty slots mattering
SEED = 0


def corpus() -> list[str]:
    """The training text, repeated with small variations (a few KB)."""
    lines = [line for line in _TEXT.splitlines() if line]
    return [f"{n} {line.lower() if n % 2 else line}" for n in range(8) for line in lines]


def build(directory: Path) -> Path:
    """Write tokenizer and model files into `directory` (created) and return it. Deterministic."""
    import torch  # noqa: PLC0415  (heavy imports only when building)
    from tokenizers import ByteLevelBPETokenizer  # noqa: PLC0415
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.save_pretrained(directory)
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    """Command line: build the model into DIR."""
    parser = argparse.ArgumentParser(description="Build the tiny GPT-2 of the example LLM server.")
    parser.add_argument("directory", type=Path, help="where to write the model and tokenizer")
    args = parser.parse_args(argv)
    print(build(args.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
