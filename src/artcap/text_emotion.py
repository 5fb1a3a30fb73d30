"""Text -> emotion: which of the 9 ArtEmis emotions a caption expresses. A scoring tool (ArtEmis' "emotional
alignment" and steerability), never a caption filter.

    classifier = text_classifier_for(annotations, splits["train"])   # trained once on TRAIN utterances, then cached
    classifier.predict(["this makes me sad ..."])                   # -> ["sadness"]
    emotional_alignment(captions_by_image, dominant_emotions(histograms_by_image), classifier)
    steerability({"fear": {image_id: caption, ...}, ...}, classifier)

The model: TF-IDF of word 1-2-grams and of character 2-5-grams (inside words), each block L2-normalised, and a
multinomial logistic regression (C chosen on the VAL paintings' utterances). Texts go through artcap.text.tokenize
first, so a raw human utterance and a generated caption (lower-case words) are read alike.

It is saved as plain arrays (safetensors: idf weights, coefficients) plus a JSON vocabulary — never a pickle — and
scored with the same sklearn analyzers it was trained with, so a saved classifier predicts exactly what the fitted
sklearn pipeline did (tests/test_text_emotion.py checks it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np
from safetensors.numpy import save_file

from .data import EMOTIONS, Annotation
from .errors import ArtcapError
from .io import _UMASK, atomic_path, atomic_write_json, read_tensors
from .text import tokenize

log = logging.getLogger("artcap")

WEIGHTS_FILE = "text_emotion.safetensors"
VOCAB_FILE = "text_emotion.json"
FORMAT = "artcap-text-emotion"
FORMAT_VERSION = 1


class EmotionJudge(Protocol):
    """What the metrics need: one emotion name per text."""

    def predict(self, texts: Sequence[str]) -> list[str]: ...


@dataclass(frozen=True)
class TextEmotionSettings:
    """The classifier's features and the C values tried on val. Defaults chosen on artemis-mini's VAL utterances."""

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)  # 0, 0: words only
    min_df: int = 2  # a feature must occur in this many training utterances (keeps the shipped vocabulary small)
    cs: tuple[float, ...] = (1.0,)  # C values tried on val; 1.0 won among 0.3-10 on artemis-mini (lbfgs: ~30 s a fit)
    class_weight: str = ""  # "" or "balanced" (raises macro recall, lowers accuracy)

    def key(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def blocks(self) -> list[tuple[str, tuple[int, int]]]:
        blocks = [("word", self.word_ngrams)]
        if self.char_ngrams[1] > 0:
            blocks.append(("char_wb", self.char_ngrams))
        return blocks


def normalise_text(text: str) -> str:
    """Lower-case words joined by spaces: what captions look like, and how human utterances are read."""
    return " ".join(tokenize(text))


def _vectorizer(analyzer: str, ngrams: tuple[int, int], min_df: int = 1, vocabulary=None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    # token_pattern: any run of non-spaces, since the text is already tokenised (keeps "don't" one word).
    words = {"token_pattern": r"\S+"} if analyzer == "word" else {}
    return TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(ngrams), min_df=min_df, sublinear_tf=True,
                           lowercase=False, vocabulary=vocabulary, dtype=np.float64, **words)


class TextEmotionClassifier:
    """TF-IDF blocks -> linear layer -> softmax over EMOTIONS. Built by `train_text_classifier` or `load`."""

    def __init__(self, settings: TextEmotionSettings, vocabularies: list[list[str]], idfs: list[np.ndarray],
                 coef: np.ndarray, intercept: np.ndarray, report: dict[str, Any] | None = None):
        self.settings, self.vocabularies, self.idfs = settings, vocabularies, idfs
        self.coef, self.intercept, self.report = coef, intercept, report or {}
        self._analyzers = [_vectorizer(kind, ngrams).build_analyzer() for kind, ngrams in settings.blocks]
        self._index = [{term: n for n, term in enumerate(v)} for v in vocabularies]

    def features(self, texts: Sequence[str]):
        """The sparse TF-IDF matrix [n, F] (blocks side by side), as TfidfVectorizer would compute it."""
        from scipy import sparse

        blocks = []
        for analyze, index, idf in zip(self._analyzers, self._index, self.idfs):
            rows, cols, values = [], [], []
            for r, text in enumerate(texts):
                counts = Counter(t for t in analyze(normalise_text(text)) if t in index)
                cols_r = np.fromiter((index[t] for t in counts), np.int64, len(counts))
                vals = (1.0 + np.log(np.fromiter(counts.values(), np.float64, len(counts)))) * idf[cols_r]
                norm = np.sqrt((vals ** 2).sum())
                rows.append(np.full(len(counts), r))
                cols.append(cols_r)
                values.append(vals / norm if norm > 0 else vals)
            blocks.append(sparse.csr_matrix((np.concatenate(values) if values else [],
                                             (np.concatenate(rows) if rows else [], np.concatenate(cols) if cols else [])),
                                            shape=(len(texts), len(idf))))
        return sparse.hstack(blocks, format="csr")

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """[n, 9] probabilities in EMOTIONS order."""
        texts = _text_list(texts)
        if not texts:
            return np.zeros((0, len(EMOTIONS)))
        logits = np.asarray(self.features(texts) @ self.coef.T) + self.intercept
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [EMOTIONS[k] for k in np.argmax(self.predict_proba(texts), axis=1)] if len(texts) else []

    # --- files: plain arrays and a JSON vocabulary, no pickle ---
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"coef": self.coef.astype(np.float32), "intercept": self.intercept.astype(np.float32),
                  **{f"idf_{n}": idf.astype(np.float32) for n, idf in enumerate(self.idfs)}}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
            os.chmod(tmp, 0o666 & ~_UMASK)  # safetensors re-creates the file as 0600
        atomic_write_json(folder / VOCAB_FILE, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "emotions": list(EMOTIONS),
            "settings": self.settings.key(), "vocabularies": self.vocabularies, "report": self.report})

    @classmethod
    def load(cls, folder: str | Path) -> "TextEmotionClassifier":
        folder = Path(folder)
        meta_path, weights_path = folder / VOCAB_FILE, folder / WEIGHTS_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtcapError(f"{meta_path}: missing; no text emotion classifier in {folder}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ArtcapError(f"{meta_path}: not valid JSON ({e}); delete it (it is retrained) or re-copy it") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION \
                or meta.get("emotions") != list(EMOTIONS):
            raise ArtcapError(f"{meta_path}: not an artcap text emotion classifier (format {FORMAT} "
                              f"{FORMAT_VERSION}); delete it (it is retrained) or re-copy it")
        if not weights_path.is_file():
            raise ArtcapError(f"{weights_path}: missing; delete {meta_path} too (it is retrained) or re-copy both")
        arrays = read_tensors(weights_path, framework="np",
                              fix=f"delete it and {meta_path.name} (they are retrained) or re-copy both")
        try:
            raw = meta["settings"]
            settings = TextEmotionSettings(**{**raw, "word_ngrams": tuple(raw["word_ngrams"]),
                                              "char_ngrams": tuple(raw["char_ngrams"]), "cs": tuple(raw["cs"])})
            vocabularies = meta["vocabularies"]
            idfs = [arrays[f"idf_{n}"].astype(np.float64) for n in range(len(settings.blocks))]
            coef, intercept = arrays["coef"].astype(np.float64), arrays["intercept"].astype(np.float64)
        except Exception as e:  # missing key, wrong types
            raise ArtcapError(f"{weights_path}: unreadable or does not match {meta_path.name} ({type(e).__name__}); "
                              f"delete both (they are retrained) or re-copy them") from None
        sizes = [len(v) for v in vocabularies]
        if sizes != [len(i) for i in idfs] or coef.shape != (len(EMOTIONS), sum(sizes)) \
                or intercept.shape != (len(EMOTIONS),):
            raise ArtcapError(f"{weights_path}: array sizes do not match the vocabularies in {meta_path.name}; "
                              f"delete both (they are retrained) or re-copy them")
        return cls(settings, vocabularies, idfs, coef, intercept, meta.get("report"))


def _text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ArtcapError("text emotion classifier: pass a list of texts, not one string")
    texts = list(texts)
    bad = next((n for n, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ArtcapError(f"text emotion classifier: texts[{bad}] is a {type(texts[bad]).__name__}, not a string")
    return texts


# --- training --------------------------------------------------------------------------------------------------------

def utterances(annotations: Sequence[Annotation], image_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """(texts, emotions) of every annotation of the given paintings, in file order."""
    wanted = set(image_ids)
    pairs = [(a.text, a.emotion) for a in annotations if a.image_id in wanted and a.emotion in EMOTIONS]
    return [t for t, _ in pairs], [e for _, e in pairs]


def train_text_classifier(train: tuple[list[str], list[str]], val: tuple[list[str], list[str]],
                          settings: TextEmotionSettings | None = None) -> TextEmotionClassifier:
    """Fit on the training utterances; C with the best val accuracy. Deterministic (lbfgs, no random state)."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    settings = settings or TextEmotionSettings()
    (train_texts, train_labels), (val_texts, val_labels) = train, val
    if not train_texts or not val_texts:
        raise ArtcapError("text emotion classifier: no training or no validation utterances with an emotion; "
                          "it needs ArtEmis data (an emotion column) with train and val paintings")
    vectorizers = [_vectorizer(kind, ngrams, settings.min_df) for kind, ngrams in settings.blocks]
    norm_train = [normalise_text(t) for t in train_texts]
    norm_val = [normalise_text(t) for t in val_texts]
    x_train = sparse.hstack([v.fit_transform(norm_train) for v in vectorizers], format="csr")
    x_val = sparse.hstack([v.transform(norm_val) for v in vectorizers], format="csr")
    y_train = np.asarray([EMOTIONS.index(e) for e in train_labels])
    y_val = np.asarray([EMOTIONS.index(e) for e in val_labels])
    best = None
    for c in settings.cs:
        model = LogisticRegression(C=c, max_iter=3000, class_weight=settings.class_weight or None)
        model.fit(x_train, y_train)
        accuracy = float(np.mean(model.predict(x_val) == y_val))
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    accuracy, c, model = best
    coef = np.zeros((len(EMOTIONS), x_train.shape[1]))
    intercept = np.full(len(EMOTIONS), -1e4)  # an emotion no training utterance has is never predicted
    coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
    vocabularies = [list(v.get_feature_names_out()) for v in vectorizers]
    report = {"C": c, "val_accuracy": accuracy, "train_utterances": len(train_texts),
              "val_utterances": len(val_texts), "features": int(x_train.shape[1])}
    return TextEmotionClassifier(settings, vocabularies, [v.idf_ for v in vectorizers], coef, intercept, report)


def score_text_classifier(classifier: EmotionJudge, texts: Sequence[str], labels: Sequence[str],
                          train_labels: Sequence[str] = ()) -> dict[str, float | int | None]:
    """Accuracy and macro recall on held-out utterances; with `train_labels`, the majority-class guess's accuracy."""
    from .emotion import macro_recall

    predicted = np.asarray([EMOTIONS.index(e) for e in classifier.predict(list(texts))])
    truth = np.asarray([EMOTIONS.index(e) for e in labels])
    scores: dict[str, float | int | None] = {"utterances": len(truth),
                                             "accuracy": float(np.mean(predicted == truth)) if len(truth) else None,
                                             "macro_recall": macro_recall(predicted, truth)}
    if train_labels:
        majority = EMOTIONS.index(Counter(train_labels).most_common(1)[0][0])
        scores["majority_accuracy"] = float(np.mean(truth == majority)) if len(truth) else None
    return scores


def default_cache_dir() -> Path:
    """$ARTCAP_CACHE/text-emotion, else ~/.cache/artcap/text-emotion."""
    return Path(os.environ.get("ARTCAP_CACHE", Path.home() / ".cache" / "artcap")) / "text-emotion"


def text_classifier_for(annotations: Sequence[Annotation], splits: Mapping[str, Sequence[str]],
                        cache_dir: str | Path | None = None,
                        settings: TextEmotionSettings | None = None) -> TextEmotionClassifier:
    """The classifier of these TRAIN utterances (C chosen on VAL), from the cache when trained before, else trained
    now (seconds) and cached. The cache key hashes the utterances, the settings and the sklearn version, so the same
    data always gives the same classifier, and other data never reuses it."""
    import sklearn

    settings = settings or TextEmotionSettings()
    train, val = utterances(annotations, splits["train"]), utterances(annotations, splits["val"])
    digest = hashlib.sha256(json.dumps([train, val, settings.key(), sklearn.__version__, FORMAT_VERSION],
                                       sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir or default_cache_dir()) / digest
    if (folder / VOCAB_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        try:
            return TextEmotionClassifier.load(folder)
        except ArtcapError as e:  # a damaged cache entry is ours: retrain over it
            log.warning("%s; retraining the text emotion classifier", e)
    classifier = train_text_classifier(train, val, settings)
    classifier.save(folder)
    return classifier


# --- metrics ---------------------------------------------------------------------------------------------------------

def dominant_emotions(histograms: Mapping[str, Sequence[float]]) -> dict[str, str]:
    """image id -> its dominant emotion, only for paintings where it has MORE than half the votes (ArtEmis)."""
    dominant = {}
    for image_id, counts in histograms.items():
        counts = np.asarray(counts, np.float64)
        if counts.sum() > 0 and counts.max() > counts.sum() / 2:
            dominant[image_id] = EMOTIONS[int(np.argmax(counts))]
    return dominant


def histograms_by_image(annotations: Sequence[Annotation], image_ids: Iterable[str]) -> dict[str, np.ndarray]:
    from .emotion import emotion_histograms

    ids = list(image_ids)
    return dict(zip(ids, emotion_histograms(annotations, ids)))


def emotional_alignment(captions_by_image: Mapping[str, str | Sequence[str]], dominant_emotion_by_image: Mapping[str, str],
                        text_classifier: EmotionJudge) -> float | None:
    """Share of captions whose judged emotion is their painting's dominant human emotion, over the captioned paintings
    that have one (> half majority; see dominant_emotions). None when no captioned painting has one."""
    texts, wanted = [], []
    for image_id, captions in captions_by_image.items():
        if dominant_emotion_by_image.get(image_id) is None:
            continue
        for caption in [captions] if isinstance(captions, str) else captions:
            texts.append(caption)
            wanted.append(dominant_emotion_by_image[image_id])
    if not texts:
        return None
    judged = text_classifier.predict(texts)
    return float(np.mean([j == w for j, w in zip(judged, wanted)]))


def steerability(captions_by_emotion: Mapping[str, Mapping[str, str]], text_classifier: EmotionJudge) -> dict[str, float]:
    """For captions written for a requested emotion: the share judged as that emotion, per emotion and "overall"
    (over all captions). Chance is 1/9."""
    unknown = sorted(set(captions_by_emotion) - set(EMOTIONS))
    if unknown:
        raise ArtcapError(f"steerability: unknown emotion {unknown[0]!r}; choose among {', '.join(EMOTIONS)}")
    shares, hits, total = {}, 0, 0
    for emotion, captions in captions_by_emotion.items():
        if not captions:
            continue
        judged = text_classifier.predict(list(captions.values()))
        matches = sum(j == emotion for j in judged)
        shares[emotion] = matches / len(judged)
        hits, total = hits + matches, total + len(judged)
    if total:
        shares["overall"] = hits / total
    return shares


def held_out_human_captions(annotations: Sequence[Annotation], image_ids: Iterable[str], seed: int = 0) -> dict[str, str]:
    """One human utterance per painting (chosen at random with `seed`): the human reference row of the metrics."""
    rng = np.random.default_rng(seed)
    by_image: dict[str, list[str]] = {}
    wanted = set(image_ids)
    for a in annotations:
        if a.image_id in wanted:
            by_image.setdefault(a.image_id, []).append(a.text)
    return {i: texts[int(rng.integers(len(texts)))] for i, texts in sorted(by_image.items())}
