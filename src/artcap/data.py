"""Stage 1, the corpus: read ArtEmis / Flickr8k annotations, split by image, apply a preprocessing preset.

Formats (see README "Data formats"):
- ArtEmis release CSV: `art_style, painting, emotion, utterance, repetition`, images at
  `<images>/<art_style>/<painting>.jpg` (the WikiArt layout).
- Flickr8k (Kaggle): `captions.txt` with header `image,caption`, images at `<images>/<image>`.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ArtcapError
from .text import Vocabulary, first_sentence, tokenize

log = logging.getLogger("artcap")

EMOTIONS = (
    "amusement", "awe", "contentment", "excitement",
    "anger", "disgust", "fear", "sadness", "something else",
)
ARTEMIS_COLUMNS = ("art_style", "painting", "emotion", "utterance", "repetition")
FLICKR_COLUMNS = ("image", "caption")
PRESETS = ("paper", "artemis")
SPLIT_FRACTIONS = {"train": 0.85, "val": 0.05, "test": 0.10}


@dataclass(frozen=True)
class Annotation:
    """One human caption of one image, as read from the file."""

    image_id: str  # "<art_style>/<painting>" for ArtEmis, the file name for Flickr8k
    image_path: Path
    text: str
    emotion: str | None
    row: int  # line number in the source file (the header is line 1)


def read_annotations(path: str | Path, images: str | Path, *, skip_missing: bool = False) -> list[Annotation]:
    """Read an ArtEmis CSV or a Flickr8k captions file (told apart by the header); every row must
    name an image that exists."""
    path, images = Path(path), Path(images)
    if not path.is_file():
        raise ArtcapError(f"{path}: no such file; pass the ArtEmis CSV or Flickr8k captions.txt")
    if not images.is_dir():
        raise ArtcapError(f"{images}: no such folder; pass the folder holding the images")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = tuple(reader.fieldnames or ())
            if set(FLICKR_COLUMNS) <= set(header) and "utterance" not in header:
                rows = _flickr_rows(reader, images)
            else:
                missing = [c for c in ARTEMIS_COLUMNS if c not in header]
                if missing:
                    raise ArtcapError(
                        f"{path}: missing column(s) {', '.join(missing)}; an ArtEmis CSV needs "
                        f"{', '.join(ARTEMIS_COLUMNS)} (a Flickr8k file needs {', '.join(FLICKR_COLUMNS)})"
                    )
                rows = _artemis_rows(reader, images)
            annotations, problems = [], []
            for row in rows:
                (problems if isinstance(row, tuple) else annotations).append(row)
    except UnicodeDecodeError as e:
        raise ArtcapError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except csv.Error as e:
        raise ArtcapError(f"{path}: not a readable CSV file ({e})") from None

    exists: dict[Path, bool] = {}
    kept = []
    for a in annotations:
        if a.image_path not in exists:
            exists[a.image_path] = a.image_path.is_file()
        if exists[a.image_path]:
            kept.append(a)
        else:
            problems.append((a.row, f"image {a.image_path} not found"))
    annotations = kept

    if problems:
        problems.sort()
        row, what = problems[0]
        summary = f"{path}: row {row}: {what}; {len(problems)} row(s) with problems"
        if not skip_missing:
            raise ArtcapError(f"{summary} — fix them, or pass --skip-missing to go on without them")
        log.warning("%s — skipped them (--skip-missing)", summary)
    if not annotations:
        raise ArtcapError(f"{path}: no usable rows")
    return annotations


def _artemis_rows(reader: csv.DictReader, images: Path) -> Iterable[Annotation | tuple[int, str]]:
    for line, rec in enumerate(reader, start=2):
        style, painting = (rec["art_style"] or "").strip(), (rec["painting"] or "").strip()
        emotion, text = (rec["emotion"] or "").strip(), (rec["utterance"] or "").strip()
        if not style or not painting:
            yield (line, "empty art_style or painting")
        elif emotion not in EMOTIONS:
            yield (line, f"unknown emotion {emotion!r} (expected one of: {', '.join(EMOTIONS)})")
        elif not tokenize(text):
            yield (line, "empty utterance")
        else:
            yield Annotation(f"{style}/{painting}", images / style / f"{painting}.jpg", text, emotion, line)


def _flickr_rows(reader: csv.DictReader, images: Path) -> Iterable[Annotation | tuple[int, str]]:
    for line, rec in enumerate(reader, start=2):
        name, text = (rec["image"] or "").strip(), (rec["caption"] or "").strip()
        if not name:
            yield (line, "empty image name")
        elif not tokenize(text):
            yield (line, "empty caption")
        else:
            yield Annotation(name, images / name, text, None, line)


def make_splits(image_ids: Iterable[str], seed: int = 2021) -> dict[str, list[str]]:
    """Split by image (never by caption): 85/5/10 as ArtEmis, reproducible from the seed."""
    ids = sorted(set(image_ids))
    random.Random(seed).shuffle(ids)
    n_train = math.floor(len(ids) * SPLIT_FRACTIONS["train"])
    n_val = math.floor(len(ids) * SPLIT_FRACTIONS["val"])
    return {
        "train": sorted(ids[:n_train]),
        "val": sorted(ids[n_train : n_train + n_val]),
        "test": sorted(ids[n_train + n_val :]),
    }


def caption_tokens(text: str, preset: str) -> list[str]:
    """How a preset turns one raw utterance into tokens (used for training text and references alike)."""
    if preset == "paper":
        return tokenize(first_sentence(text))
    if preset == "artemis":
        return tokenize(text)
    raise ArtcapError(f"unknown preprocessing preset {preset!r}; choose one of: {', '.join(PRESETS)}")


@dataclass
class CaptionData:
    """The corpus after a preset: what training, decoding and evaluation share."""

    preset: str
    paths: dict[str, Path]  # image id -> image file
    captions: dict[str, list[list[str]]]  # image id -> kept captions, tokenised
    emotions: dict[str, list[str | None]]  # image id -> emotion of each kept caption
    splits: dict[str, list[str]]
    max_len: int  # longest caption in tokens (without <bos>/<eos>)
    vocab: Vocabulary = field(repr=False)

    def split_ids(self, split: str) -> list[str]:
        if split == "all":
            return sorted(self.paths)
        return [i for i in self.splits[split] if i in self.paths]

    def counts(self) -> dict[str, int]:
        return {
            "images": len(self.paths),
            "captions": sum(len(c) for c in self.captions.values()),
            "vocabulary": len(self.vocab),
            "max_len": self.max_len,
            **{f"{s}_images": len(self.split_ids(s)) for s in ("train", "val", "test")},
        }


def prepare(
    annotations: Sequence[Annotation],
    preset: str,
    splits: dict[str, list[str]] | None = None,
    seed: int = 2021,
) -> CaptionData:
    """Apply a preprocessing preset.

    paper:   first 5 captions per image in file order, first sentence of each, every training
             word in the vocabulary, max length = the longest kept caption.
    artemis: ArtEmis' own: drop utterances under 5 tokens, drop those longer than the 95th
             percentile of training lengths, words seen fewer than 5 times in training -> <unk>.
    """
    by_image: dict[str, list[Annotation]] = {}
    for a in annotations:
        by_image.setdefault(a.image_id, []).append(a)
    splits = splits or make_splits(by_image, seed)
    train_ids = set(splits["train"])

    captions: dict[str, list[list[str]]] = {}
    emotions: dict[str, list[str | None]] = {}
    for image_id, anns in by_image.items():
        if preset == "paper":
            anns = anns[:5]
        pairs = [(caption_tokens(a.text, preset), a.emotion) for a in anns]
        if preset == "artemis":
            pairs = [(t, e) for t, e in pairs if len(t) >= 5]
        pairs = [(t, e) for t, e in pairs if t]
        if pairs:
            captions[image_id] = [t for t, _ in pairs]
            emotions[image_id] = [e for _, e in pairs]

    train_lengths = sorted(len(t) for i in train_ids if i in captions for t in captions[i])
    if not train_lengths:
        raise ArtcapError("no training captions left after preprocessing; is the data set empty?")
    if preset == "artemis":
        max_len = train_lengths[min(len(train_lengths) - 1, math.ceil(0.95 * len(train_lengths)) - 1)]
        for image_id in list(captions):
            keep = [k for k, t in enumerate(captions[image_id]) if len(t) <= max_len]
            captions[image_id] = [captions[image_id][k] for k in keep]
            emotions[image_id] = [emotions[image_id][k] for k in keep]
            if not keep:
                del captions[image_id], emotions[image_id]
        min_count = 5
    else:
        max_len = max(len(t) for caps in captions.values() for t in caps)
        min_count = 1
    vocab = Vocabulary.build((t for i in train_ids if i in captions for t in captions[i]), min_count)
    paths = {i: by_image[i][0].image_path for i in captions}
    return CaptionData(preset, paths, captions, emotions, splits, max_len, vocab)


def references(annotations: Sequence[Annotation], preset: str, image_ids: Iterable[str]) -> dict[str, list[str]]:
    """Every utterance of each image, processed the way the preset processes training text.

    All of an image's utterances count (not only the 5 the paper trained on), so scores do not
    depend on caption order in the file.
    """
    wanted = set(image_ids)
    refs: dict[str, list[str]] = {}
    for a in annotations:
        if a.image_id in wanted:
            tokens = caption_tokens(a.text, preset)
            if tokens:
                refs.setdefault(a.image_id, []).append(" ".join(tokens))
    return refs
