"""Text <-> token ids for the HTTP shell: the built-in word-piece tokenizer or a real one.

The server needs two things from a tokenizer: prompt ids (``encode``) and, for generation,
``n`` output tokens with their texts (``output_tokens``) such that the concatenated texts
encode back to the same ids (so multi-turn prompts hit the blocks the engine cached).

- ``WordPieceText`` (default) wraps ``kvroute_sim.tokenizer`` (one token per word piece).
- ``HFText(path)`` loads a Hugging Face ``tokenizer.json`` (a file, or a directory holding
  one) with the ``tokenizers`` library, for clients such as inference-perf that count tokens
  with the same tokenizer. Generated tokens are the ``OUTPUT_WORDS`` that are one token with a
  leading space in that vocabulary.

``python -m kvroute_sim.text make-tokenizer DIR`` writes a small byte-level BPE tokenizer
directory (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) that
offline benchmark clients can load with ``AutoTokenizer.from_pretrained(DIR)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from kvroute_sim import tokenizer as wp


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def output_tokens(self, seed: int, n: int) -> tuple[list[int], list[str]]: ...


class WordPieceText:
    """The simulator's own deterministic tokenizer."""

    def encode(self, text: str) -> list[int]:
        return wp.tokenize(text)

    def output_tokens(self, seed: int, n: int) -> tuple[list[int], list[str]]:
        return wp.output_tokens(seed, n)


class HFText:
    """A real Hugging Face fast tokenizer (``tokenizer.json``)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        self._tok = Tokenizer.from_file(str(p))
        words: list[tuple[int, str]] = []
        for w in dict.fromkeys(wp.OUTPUT_WORDS):
            ids = self._tok.encode(" " + w, add_special_tokens=False).ids
            if len(ids) == 1:
                words.append((ids[0], " " + w))
        if not words:
            raise ValueError(f"{p}: no output word is a single token in this vocabulary")
        self._words = words

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def output_tokens(self, seed: int, n: int) -> tuple[list[int], list[str]]:
        k = len(self._words)
        picks = [self._words[(seed + i * 7) % k] for i in range(n)]
        return [i for i, _ in picks], [t for _, t in picks]


def text_tokenizer(path: str | Path | None) -> TextTokenizer:
    """``HFText(path)`` when a path is configured, else the built-in word pieces."""
    return WordPieceText() if path is None else HFText(path)


def make_tokenizer(directory: str | Path, vocab_size: int = 4096) -> Path:
    """Train a small byte-level BPE on simulator-style text and save it as a HF directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [" ".join(wp.OUTPUT_WORDS)] * 50 + [
        f"w{i} t{i} {i} question {i} system prompt {i}" for i in range(2000)
    ]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": specials[0],
        "eos_token": specials[1],
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "chat_template": (
            "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "<|assistant|>\n"
        ),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": specials[0], "eos_token": specials[1]}, indent=2)
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvroute_sim.text")
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-tokenizer", help="write a small HF tokenizer directory")
    mk.add_argument("directory")
    mk.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args(argv)
    print(make_tokenizer(args.directory, args.vocab_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
