"""Caption text: tokenisation, the first sentence of an utterance, and the vocabulary."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ArtcapError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

# Words are runs of letters/digits, keeping in-word apostrophes ("don't", "artist's").
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
# A sentence ends at . ! ? (or a run of them) followed by white space or the end.
_SENTENCE_END = re.compile(r"[.!?]+(?:\s+|$)")


def one_line(text: str) -> str:
    """Text with every run of white space (line breaks of any kind: \r, \u2028, \x85 ...) as one space."""
    return " ".join(text.split())


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; punctuation is dropped (as Keras' Tokenizer did in the paper)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def first_sentence(text: str) -> str:
    """The first sentence that holds at least one word; the whole text if none ends early."""
    for sentence in _SENTENCE_END.split(text):
        if tokenize(sentence):
            return sentence.strip()
    return text.strip()


@dataclass
class Vocabulary:
    """Word <-> index. Indices 0..3 are <pad>, <bos>, <eos>, <unk>."""

    words: list[str]

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIALS)]) != SPECIALS:
            raise ArtcapError(f"vocabulary must start with {', '.join(SPECIALS)}; got {self.words[:4]}")
        self.index = {w: i for i, w in enumerate(self.words)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 1) -> "Vocabulary":
        counts = Counter(w for tokens in captions for w in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """<bos> tokens <eos> as ids; unknown words map to <unk>."""
        return [self.bos_id] + [self.index.get(w, self.unk_id) for w in tokens] + [self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to a caption, stopping at <eos> and skipping <bos>/<pad>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.words[i])
        return " ".join(words)

    def save(self, path: Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, json.dumps(self.words, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        try:
            words = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ArtcapError(f"{path}: cannot read the vocabulary ({e}); the model folder is incomplete") from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ArtcapError(f"{path}: the vocabulary must be a JSON list of words")
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ArtcapError(f"{path}: the vocabulary must start with {', '.join(SPECIALS)}; got {words[:4]}"
                              " (the model folder is damaged: copy vocab.json again)")
        return cls(words)
