"""Stage 1, the corpus: read ArtEmis / Flickr8k annotations, split by image, apply a preprocessing preset.

Formats (see docs/data.md):
- ArtEmis release CSV: `art_style, painting, emotion, utterance, repetition`, images at
  `<images>/<art_style>/<painting>.jpg` (the WikiArt layout).
- Flickr8k (Kaggle): `captions.txt` with header `image,caption`, images at `<images>/<image>`.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import ArtcapError
from .paths import OutsideRootError, confined
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
    # The row's columns beyond its format's own (name, value): what conditions other than emotion read.
    columns: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def column(self, name: str) -> str | None:
        """The value of one of the row's extra columns, None when the file has no such column."""
        return next((value for key, value in self.columns if key == name), None)


def read_annotations(path: str | Path, images: str | Path, *, skip_missing: bool = False) -> list[Annotation]:
    """Read an ArtEmis CSV or a Flickr8k captions file (told apart by the header); every row must
    name an image that exists. Exact duplicate rows are dropped with one warning. Rows are named
    by the line they start on (a quoted caption may span several lines)."""
    path, images = Path(path), Path(images)
    if not path.is_file():
        raise ArtcapError(f"{path}: no such file; pass the ArtEmis CSV or Flickr8k captions.txt")
    if not images.is_dir():
        raise ArtcapError(f"{images}: no such folder; pass the folder holding the images")
    locate = _image_locator(images)
    annotations: list[Annotation] = []
    problems: list[tuple[int, str]] = []
    duplicates: list[tuple[int, int]] = []  # (row, the earlier row it repeats)
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            records = _csv_records(csv.reader(f))
            header = [name.strip() for name in next(records, (1, []))[1]]
            columns, make_row = _row_format(path, header)
            where = {name: header.index(name) for name in columns}  # the first column of that name
            extra = {name: header.index(name) for name in header if name not in columns}
            first_seen: dict[tuple[str, ...], int] = {}
            for line, values in records:
                if len(values) != len(header):
                    problems.append((line, f"{len(values)} values for {len(header)} columns ({', '.join(header)}); "
                                           "quote values that contain commas"))
                    continue
                key = tuple(values)
                if key in first_seen:
                    duplicates.append((line, first_seen[key]))
                    continue
                first_seen[key] = line
                row = _with_columns(make_row(line, {name: values[i].strip() for name, i in where.items()}, locate),
                                    values, extra)
                (problems if isinstance(row, tuple) else annotations).append(row)
    except UnicodeDecodeError as e:
        raise ArtcapError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except csv.Error as e:
        raise ArtcapError(f"{path}: row {line + 1}: not readable as CSV ({e})") from None
    if duplicates:
        row, original = duplicates[0]
        log.warning("%s: dropped %d exact duplicate row(s), the first is row %d (a copy of row %d)",
                    path, len(duplicates), row, original)

    exists: dict[Path, bool] = {}
    kept = []
    for a in annotations:
        if a.image_path not in exists:
            exists[a.image_path] = _is_file(a.image_path)
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


Locator = Callable[[str, str], "Path | str"]  # (path relative to the image folder, its columns) -> path or problem
RowMaker = Callable[[int, dict[str, str], Locator], "Annotation | tuple[int, str]"]


def _image_locator(images: Path) -> Locator:
    """The image a row names, through paths.confined (a problem when it is outside `images`); each
    painting is looked up once however many rows it has (a full ArtEmis CSV has 450K rows)."""
    @functools.lru_cache(maxsize=None)
    def locate(relative: str, columns: str) -> Path | str:
        try:
            return confined(images, relative, columns)
        except OutsideRootError as e:
            return str(e)

    return locate


def _csv_records(reader) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, its values) for each non-blank record. csv's own line count is
    where a record ends, which differs when a quoted value holds line breaks."""
    end = 0
    for values in reader:
        start, end = end + 1, reader.line_num
        if values:  # a blank line
            yield start, values


def _with_columns(row: Annotation | tuple[int, str], values: list[str], extra: dict[str, int]):
    """The row's annotation with the file's extra columns (what conditions other than emotion read)."""
    if not extra or isinstance(row, tuple):
        return row
    return replace(row, columns=tuple((name, values[i].strip()) for name, i in extra.items()))


def _row_format(path: Path, header: list[str]) -> tuple[tuple[str, ...], RowMaker]:
    if set(FLICKR_COLUMNS) & set(header) and "utterance" not in header:  # image and/or caption
        missing = [c for c in FLICKR_COLUMNS if c not in header]
        if missing:
            raise ArtcapError(f"{path}: missing column(s) {', '.join(missing)}; a Flickr8k file needs "
                              f"{', '.join(FLICKR_COLUMNS)}")
        return FLICKR_COLUMNS, _flickr_row
    missing = [c for c in ARTEMIS_COLUMNS if c not in header]
    if missing:
        separator = next((sep for sep in ";\t|" if len(header) == 1 and sep in header[0]), None)
        advice = f"; it seems to use {separator!r} between columns: save it comma-separated" if separator else ""
        raise ArtcapError(
            f"{path}: missing column(s) {', '.join(missing)}; an ArtEmis CSV needs "
            f"{', '.join(ARTEMIS_COLUMNS)} (a Flickr8k file needs {', '.join(FLICKR_COLUMNS)}){advice}"
        )
    return ARTEMIS_COLUMNS, _artemis_row


def _artemis_row(line: int, rec: dict[str, str], locate: Locator) -> Annotation | tuple[int, str]:
    style, painting, emotion, text = rec["art_style"], rec["painting"], rec["emotion"], rec["utterance"]
    if not style or not painting:
        return (line, "empty art_style or painting")
    if emotion not in EMOTIONS:
        return (line, f"unknown emotion {emotion!r} (expected one of: {', '.join(EMOTIONS)})")
    if not tokenize(text):
        return (line, "empty utterance")
    image = locate(f"{style}/{painting}.jpg", "art_style/painting")
    return Annotation(f"{style}/{painting}", image, text, emotion, line) if isinstance(image, Path) else (line, image)


def _flickr_row(line: int, rec: dict[str, str], locate: Locator) -> Annotation | tuple[int, str]:
    name, text = rec["image"], rec["caption"]
    if not name:
        return (line, "empty image name")
    if not tokenize(text):
        return (line, "empty caption")
    image = locate(name, "image")
    return Annotation(name, image, text, None, line) if isinstance(image, Path) else (line, image)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL in it
        return False


# The split of a data set into train/val/test when none is given: training and evaluation must make the same one.
SPLIT_SEED = 2021


def make_splits(image_ids: Iterable[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
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


SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class SplitSizes:
    """How many images each split holds, and the one-line account messages start with."""

    train: int
    val: int
    test: int
    made: bool = True  # by make_splits (85/5/10); False: splits handed in, e.g. a run's splits.json

    @property
    def total(self) -> int:
        return self.train + self.val + self.test

    def __str__(self) -> str:
        how = "split 85/5/10" if self.made else "split"
        noun = "painting" if self.total == 1 else "paintings"
        return f"{self.total} {noun} {how} into {self.train}/{self.val}/{self.test} (train/val/test)"

    def require(self, *needed: str) -> None:
        """Raise ArtcapError when a needed split ("train", "val", "test") is empty, saying how many
        paintings an 85/5/10 split needs so that none is."""
        empty = [name for name in needed if getattr(self, name) == 0]
        if empty:
            raise ArtcapError(f"{self}: {self.shortage(empty)}")

    def shortage(self, empty: Sequence[str]) -> str:
        what = " and no ".join(f"{SPLIT_NAMES[name]} painting" for name in empty)
        return f"no {what}; need at least {min_paintings(*empty)} paintings with captions"


def split_sizes(splits: dict[str, Sequence[str]], made: bool = True) -> SplitSizes:
    return SplitSizes(len(splits["train"]), len(splits["val"]), len(splits["test"]), made)


def min_paintings(*needed: str) -> int:
    """The fewest paintings for which make_splits leaves every needed split non-empty (train: 2,
    val: 20, test: 1)."""
    def sizes(n: int) -> dict[str, int]:
        n_train = math.floor(n * SPLIT_FRACTIONS["train"])
        n_val = math.floor(n * SPLIT_FRACTIONS["val"])
        return {"train": n_train, "val": n_val, "test": n - n_train - n_val}

    return next(n for n in range(1, 10_000) if all(sizes(n)[name] > 0 for name in needed))


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
    splits_made: bool = True  # by make_splits (85/5/10), not handed in
    # image id -> the annotation of each kept caption: what conditions read a caption's value from
    sources: dict[str, list[Annotation]] = field(default_factory=dict, repr=False)

    def drop(self, image_id: str) -> None:
        """Forget an image (its features could not be made)."""
        for table in (self.paths, self.captions, self.emotions, self.sources):
            table.pop(image_id, None)

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

    def split_sizes(self) -> SplitSizes:
        """Images with kept captions in each split (what training and evaluation will see)."""
        return split_sizes({s: self.split_ids(s) for s in ("train", "val", "test")}, self.splits_made)

    def require_splits(self, *needed: str) -> None:
        """ArtcapError naming the split sizes when a needed split is empty; training calls
        `require_splits("train", "val")` before anything else (val picks the best epoch)."""
        self.split_sizes().require(*needed)


def prepare(
    annotations: Sequence[Annotation],
    preset: str,
    splits: dict[str, list[str]] | None = None,
    seed: int = SPLIT_SEED,
    require: Sequence[str] = ("train",),
) -> CaptionData:
    """Apply a preprocessing preset.

    paper:   first 5 captions per image in file order, first sentence of each, every training
             word in the vocabulary, max length = the longest kept caption.
    artemis: ArtEmis' own: drop utterances under 5 tokens, drop those longer than the 95th
             percentile of training lengths, words seen fewer than 5 times in training -> <unk>.

    Splits are by painting; an empty split in `require` raises ArtcapError with the split sizes
    ("12 paintings split 85/5/10 into 10/0/2 (train/val/test): no validation painting; need at
    least 20 ..."), other empty splits are warned about. Training needs ("train", "val").
    """
    by_image: dict[str, list[Annotation]] = {}
    for a in annotations:
        by_image.setdefault(a.image_id, []).append(a)
    made = not splits
    splits = splits or make_splits(by_image, seed)
    sizes = split_sizes({s: [i for i in splits[s] if i in by_image] for s in ("train", "val", "test")}, made)
    sizes.require(*require)
    empty = [s for s in ("val", "test") if getattr(sizes, s) == 0 and s not in require]
    if empty:
        log.warning("%s: %s", sizes, sizes.shortage(empty))
    train_ids = set(splits["train"])

    captions: dict[str, list[list[str]]] = {}
    sources: dict[str, list[Annotation]] = {}
    for image_id, anns in by_image.items():
        if preset == "paper":
            anns = anns[:5]
        pairs = [(caption_tokens(a.text, preset), a) for a in anns]
        if preset == "artemis":
            pairs = [(t, a) for t, a in pairs if len(t) >= 5]
        pairs = [(t, a) for t, a in pairs if t]
        if pairs:
            captions[image_id] = [t for t, _ in pairs]
            sources[image_id] = [a for _, a in pairs]

    train_lengths = sorted(len(t) for i in train_ids if i in captions for t in captions[i])
    if not train_lengths:
        kept = " (it keeps utterances of 5 tokens or more)" if preset == "artemis" else ""
        raise ArtcapError(f"{sizes}: the {preset!r} preset left no caption of the {sizes.train} training "
                          f"painting(s){kept}; check the utterances, or use more paintings")
    if preset == "artemis":
        max_len = train_lengths[min(len(train_lengths) - 1, math.ceil(0.95 * len(train_lengths)) - 1)]
        for image_id in list(captions):
            keep = [k for k, t in enumerate(captions[image_id]) if len(t) <= max_len]
            captions[image_id] = [captions[image_id][k] for k in keep]
            sources[image_id] = [sources[image_id][k] for k in keep]
            if not keep:
                del captions[image_id], sources[image_id]
        min_count = 5
    else:
        max_len = max(len(t) for caps in captions.values() for t in caps)
        min_count = 1
    vocab = Vocabulary.build((t for i in train_ids if i in captions for t in captions[i]), min_count)
    paths = {i: by_image[i][0].image_path for i in captions}
    emotions = {i: [a.emotion for a in anns] for i, anns in sources.items()}
    data = CaptionData(preset, paths, captions, emotions, splits, max_len, vocab, made, sources)
    data.require_splits(*require)  # what the preset left, e.g. a val split of too-short utterances
    return data


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
