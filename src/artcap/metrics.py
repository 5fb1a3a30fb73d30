"""Caption metrics: the COCO caption protocol (pycocoevalcap), the research report's per-image
BLEU, diversity and grounding. Pure functions on plain dicts keyed by image id; no model code.

Inputs everywhere: ``predictions: {image_id: caption}`` and ``references: {image_id: [caption, ...]}``.
The ids of both must match exactly (else ``ArtcapError`` naming a missing id).

Java: the COCO protocol tokenises with Stanford's PTB tokenizer and scores METEOR with the
METEOR 1.5 jar, both shipped inside pycocoevalcap and run by ``java``. Each public function starts
at most one JVM for tokenisation and ``coco_scores`` one more for METEOR (never one per image).
Without ``java`` on PATH, tokenisation falls back to a simple tokenizer and METEOR is omitted; each
fallback is announced once per process with a one-line ``warnings.warn``.
"""

from __future__ import annotations

import math
import os
import shutil
from statistics import fmean as statistics_mean, median as statistics_median
import subprocess
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Literal

import numpy as np

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
from pycocoevalcap.cider.cider_scorer import CiderScorer
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from .errors import ArtcapError
from .text import one_line
from .text import tokenize as simple_tokenize

__all__ = [
    "tokenize_for_scoring",
    "coco_scores",
    "per_image_bleu",
    "diversity",
    "top_caption_share",
    "collapse_scores",
    "grounding",
    "evaluate_captions",
    "format_markdown_table",
]

COCO_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")

_PTB_JAR_DIR = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
_WARNED: set[str] = set()  # fallback warnings already shown in this process


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (needed by the PTB tokenizer and METEOR)."""
    return shutil.which("java") is not None


# --------------------------------------------------------------------------- tokenisation


def _ptb_tokenize_lines(lines: list[str]) -> list[str]:
    """The COCO protocol's tokenisation of each line, in one JVM.

    Same jar, flags (``-preserveLines -lowerCase``) and punctuation removal as pycocoevalcap's
    ``PTBTokenizer.tokenize``; we pipe through stdin instead of writing a temporary file into
    site-packages (which may be read-only) and keep the jar's progress line off stderr.
    """
    if not lines:
        return []
    cmd = [
        "java", "-Dfile.encoding=UTF-8", "-cp", ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR,
        "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", "-encoding", "utf-8",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, cwd=_PTB_JAR_DIR, input="\n".join(lines).encode("utf-8"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise ArtcapError(
            f"the PTB tokenizer (java, {ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR}) failed: "
            f"{detail.decode(errors='replace').strip()[-200:] or e}; check the Java installation"
        ) from None
    out = done.stdout.decode("utf-8").split("\n")
    if len(out) < len(lines) or any(s.strip() for s in out[len(lines) :]):
        raise ArtcapError(
            f"the PTB tokenizer returned {len(out)} lines for {len(lines)} captions; "
            "report this caption set as a bug"
        )
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punctuation) for line in out[: len(lines)]]


def _tokenize_lines(lines: list[str]) -> list[str]:
    # the Java tokenizer treats \r, \u2028, \x85 ... as line breaks: one would shift every later caption
    lines = [one_line(s) for s in lines]
    if java_available():
        return _ptb_tokenize_lines(lines)
    _warn_once(
        "tokenizer",
        "java not found on PATH: captions are tokenised by lower-casing and dropping punctuation "
        "instead of the COCO PTB tokenizer, so scores differ slightly from published ones",
    )
    return [" ".join(simple_tokenize(s)) for s in lines]


def tokenize_for_scoring(captions: Mapping[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """Tokenise captions as the COCO caption protocol does, for every image in one call.

    With Java on PATH: Stanford's PTB tokenizer from pycocoevalcap (stanford-corenlp-3.4.1.jar,
    ``-preserveLines -lowerCase``) followed by removal of pycocoevalcap's punctuation tokens; e.g.
    ``"A dog's day!" -> "a dog 's day"``. One JVM for all captions.
    Without Java: a documented fallback, ``artcap.text.tokenize`` (lower-case runs of letters and
    digits, in-word apostrophes kept, all punctuation dropped; ``"a dog's day"``), announced once
    with a one-line warning. Returns ``{image_id: ["space separated tokens", ...]}``.
    """
    keys = list(captions)
    flat = [c for k in keys for c in captions[k]]
    tokens = iter(_tokenize_lines(flat))
    return {k: [next(tokens) for _ in captions[k]] for k in keys}


# --------------------------------------------------------------------------- validation


def _check_inputs(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, list[str]]
) -> list[Hashable]:
    """Sorted image ids after checking that both sides name the same, well-formed images."""
    if not predictions:
        raise ArtcapError("no predictions to score; pass at least one {image_id: caption}")
    missing_refs = [k for k in predictions if k not in references]
    if missing_refs:
        raise ArtcapError(
            f"image id {missing_refs[0]!r} has a prediction but no references "
            f"({len(missing_refs)} such ids); score predictions and references of the same images"
        )
    missing_preds = [k for k in references if k not in predictions]
    if missing_preds:
        raise ArtcapError(
            f"image id {missing_preds[0]!r} has references but no prediction "
            f"({len(missing_preds)} such ids); score predictions and references of the same images"
        )
    for k, caption in predictions.items():
        if not isinstance(caption, str):
            raise ArtcapError(f"prediction for image {k!r} must be a string, got {type(caption).__name__}")
        refs = references[k]
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise ArtcapError(f"references for image {k!r} must be a list of caption strings")
        if not any(r.strip() for r in refs):
            raise ArtcapError(f"image {k!r} has no non-empty reference caption; give it at least one")
    return sorted(predictions, key=str)


def _tokenized_pairs(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, list[str]]
) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    """Validated and tokenised ``(res, gts)`` in pycocoevalcap's format, sorted ids, one JVM.

    Blank references are dropped (they are not captions); a blank prediction stays as "" and
    scores 0 on every metric.
    """
    ids = _check_inputs(predictions, references)
    refs = {k: [r for r in references[k] if r.strip()] for k in ids}
    flat = [predictions[k] for k in ids] + [r for k in ids for r in refs[k]]
    tokens = _tokenize_lines(flat)
    res = {k: [tokens[i]] for i, k in enumerate(ids)}
    pos = len(ids)
    gts = {}
    for k in ids:
        gts[k] = tokens[pos : pos + len(refs[k])]
        pos += len(refs[k])
    return res, gts


# --------------------------------------------------------------------------- COCO protocol


def _meteor(gts: dict, res: dict) -> tuple[float, np.ndarray] | None:
    """Corpus METEOR 1.5 and each image's METEOR statistics row ([N, 23], ``res`` order), one JVM for all
    images; None without Java.

    The protocol of pycocoevalcap's ``Meteor.compute_score``: one ``SCORE`` line per image gives its statistics
    (word counts, matches per module, chunks), then one ``EVAL`` line with all of them gives the corpus score,
    which METEOR computes from the *summed* statistics (not the mean of per-image scores). ``meteor_from_sums``
    repeats that arithmetic, so a bootstrap can re-aggregate resampled rows without Java.
    """
    if not java_available():
        _warn_once("meteor", "java not found on PATH: METEOR is omitted from the caption scores")
        return None
    from pycocoevalcap.meteor.meteor import Meteor  # starts the JVM on construction

    # METEOR's line protocol uses '|||' as a field separator.
    gts = {k: [r.replace("|||", " ") for r in v] for k, v in gts.items()}
    res = {k: [v[0].replace("|||", " ")] for k, v in res.items()}
    scorer = Meteor()
    try:
        stats = [scorer._stat(res[k][0], gts[k]) for k in res]
        scorer.meteor_p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        scorer.meteor_p.stdin.flush()
        for _ in stats:  # the per-image scores, which meteor_from_sums reproduces
            scorer.meteor_p.stdout.readline()
        score = float(scorer.meteor_p.stdout.readline().strip())
        rows = np.array([[float(x) for x in line.split()] for line in stats], dtype=float)
    except (ValueError, OSError) as e:
        raise ArtcapError(f"METEOR (java, meteor-1.5.jar) failed: {e}; check the Java installation") from None
    finally:
        scorer.meteor_p.kill()  # do not leave a 2 GB JVM waiting for garbage collection
    if rows.ndim != 2 or rows.shape[1] != METEOR_FIELDS:
        raise ArtcapError(f"METEOR (meteor-1.5.jar) returned statistics of shape {rows.shape}, expected "
                          f"[{len(stats)}, {METEOR_FIELDS}]; check the Java installation")
    return score, rows


# METEOR 1.5's "en" parameters as pycocoevalcap runs it (-l en -norm, default task): alpha, beta, gamma, delta
# and the weights of its four matching modules (exact, stem, synonym, paraphrase).
METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA, METEOR_DELTA = 0.85, 0.2, 0.6, 0.75
METEOR_MODULE_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])
METEOR_FIELDS = 23  # test/ref length, test/ref function words, 4 x 4 stage matches, chunks, test/ref matches


def meteor_from_sums(stats: np.ndarray) -> np.ndarray:
    """METEOR 1.5's score from (summed) statistics rows [..., 23], as its ``MeteorScorer.computeMetrics`` does:
    weighted precision and recall (content words weigh delta, function words 1 - delta), their alpha-weighted
    harmonic mean, and the fragmentation penalty gamma * (chunks / mean matches) ** beta."""
    test_len, ref_len, test_function, ref_function = (stats[..., i] for i in range(4))
    stages = stats[..., 4:20].reshape(stats.shape[:-1] + (4, 4))  # per module: test/ref content, test/ref function
    delta = METEOR_DELTA
    test_matches = (METEOR_MODULE_WEIGHTS * (delta * stages[..., 0] + (1 - delta) * stages[..., 2])).sum(-1)
    ref_matches = (METEOR_MODULE_WEIGHTS * (delta * stages[..., 1] + (1 - delta) * stages[..., 3])).sum(-1)
    test_weighted = delta * (test_len - test_function) + (1 - delta) * test_function
    ref_weighted = delta * (ref_len - ref_function) + (1 - delta) * ref_function
    chunks, test_total, ref_total = stats[..., 20], stats[..., 21], stats[..., 22]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(test_weighted > 0, test_matches / test_weighted, 0.0)
        recall = np.where(ref_weighted > 0, ref_matches / ref_weighted, 0.0)
        f_mean = np.where((precision > 0) & (recall > 0),
                          precision * recall / (METEOR_ALPHA * precision + (1 - METEOR_ALPHA) * recall), 0.0)
        exact = (test_total == test_len) & (ref_total == ref_len) & (chunks == 1)
        fragmentation = np.where(exact, 0.0, np.nan_to_num(chunks / ((test_total + ref_total) / 2)))
    return f_mean * (1 - METEOR_GAMMA * fragmentation**METEOR_BETA)


def _coco_from_tokens(gts: dict, res: dict, with_meteor: bool, statistics: dict | None = None) -> dict[str, float]:
    """The COCO scores; with a ``statistics`` dict, also each one's per-image rows (``artcap.bootstrap``)."""
    from . import bootstrap

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)  # corpus BLEU, closest ref length
    scores = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
    if with_meteor:
        meteor = _meteor(gts, res)
        if meteor is not None:
            scores["METEOR"] = meteor[0]
            if statistics is not None:
                statistics["METEOR"] = bootstrap.Pooled(meteor[1], meteor_from_sums)
    rouge, rouge_per_image = Rouge().compute_score(gts, res)
    scores["ROUGE-L"] = float(rouge)
    cider = _cider_per_image(gts, res)
    scores["CIDEr-D"] = float(cider.mean())
    if statistics is not None:
        counts = _bleu_counts(gts, res)
        statistics.update({f"BLEU-{n}": bootstrap.Pooled(counts, _corpus_bleu(n)) for n in range(1, 5)})
        statistics["ROUGE-L"] = bootstrap.mean_of(rouge_per_image)
        statistics["CIDEr-D"] = bootstrap.mean_of(cider)  # idf fixed from the whole set, as the point estimate's
    return scores


_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9  # pycocoevalcap BleuScorer's epsilons


def _bleu_counts(gts: dict, res: dict) -> np.ndarray:
    """Per image [correct 1..4, guesses 1..4, caption length, closest reference length]: what corpus BLEU sums."""
    rows = []
    for k in res:
        cooked = cook_test(res[k][0], cook_refs(gts[k], n=4), eff="closest", n=4)
        rows.append([*cooked["correct"], *cooked["guess"], cooked["testlen"], cooked["reflen"]])
    return np.asarray(rows, dtype=float)


def _corpus_bleu(n: int):
    """Corpus BLEU-n from summed ``_bleu_counts`` rows, with BleuScorer's arithmetic (epsilons included)."""

    def aggregate(sums: np.ndarray) -> np.ndarray:
        correct, guess, test_len, ref_len = sums[..., 0:4], sums[..., 4:8], sums[..., 8], sums[..., 9]
        precision = np.prod((correct[..., :n] + _BLEU_TINY) / (guess[..., :n] + _BLEU_SMALL), axis=-1) ** (1.0 / n)
        ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
        return np.where(ratio < 1, precision * np.exp(1 - 1 / ratio), precision)

    return aggregate


def coco_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, list[str]],
    with_meteor: bool = True,
) -> dict[str, float]:
    """The COCO caption protocol via pycocoevalcap, on PTB-tokenised text.

    Keys: ``BLEU-1..BLEU-4`` (corpus BLEU, "closest" reference length, pycocoevalcap's Bleu),
    ``METEOR`` (METEOR 1.5 jar; absent, with one warning line, when ``java`` is not on PATH or
    ``with_meteor`` is False: it costs a ~10 s JVM start), ``ROUGE-L`` (pycocoevalcap's Rouge,
    beta 1.2) and ``CIDEr-D`` (pycocoevalcap's Cider, which *is* CIDEr-D: clipped n-gram tf-idf,
    Gaussian length penalty with sigma 6, mean over n=1..4, x10; idf from the scored references).
    A blank prediction is scored as an empty caption: 0 on every metric, and its closest
    reference length still counts against corpus BLEU's brevity penalty.
    """
    res, gts = _tokenized_pairs(predictions, references)
    return _coco_from_tokens(gts, res, with_meteor)


# --------------------------------------------------------------------------- per-image BLEU


def _sentence_bleu(hypothesis: str, refs: list[str], n: int, smoothing: str) -> float:
    """BLEU-n of one tokenised hypothesis against its tokenised references."""
    cooked = cook_test(hypothesis, cook_refs(refs, n=n), eff="closest", n=n)
    correct, guess = cooked["correct"], cooked["guess"]
    testlen, reflen = cooked["testlen"], cooked["reflen"]
    if smoothing == "none":  # pycocoevalcap's own per-image arithmetic, epsilons included
        tiny, small = 1e-15, 1e-9
        bleu = math.prod((correct[k] + tiny) / (guess[k] + small) for k in range(n)) ** (1.0 / n)
        ratio = (testlen + tiny) / (reflen + small)
        return bleu * math.exp(1 - 1 / ratio) if ratio < 1 else bleu
    # "exp": sacreBLEU's sentence BLEU (Chen & Cherry 2014, method 3, with effective order).
    if testlen == 0 or correct[0] == 0:
        return 0.0
    log_precisions, halvings = [], 1.0
    for k in range(n):
        if guess[k] == 0:  # caption shorter than k+1 words: drop the order (effective order)
            break
        if correct[k] == 0:
            halvings *= 2.0
            log_precisions.append(math.log(1.0 / (halvings * guess[k])))
        else:
            log_precisions.append(math.log(correct[k] / guess[k]))
    brevity = 1.0 if testlen >= reflen else math.exp(1 - reflen / testlen)
    return brevity * math.exp(sum(log_precisions) / len(log_precisions))


def _per_image_bleu_from_tokens(gts: dict, res: dict, n: int, smoothing: str) -> dict[Hashable, float]:
    return {k: _sentence_bleu(res[k][0], gts[k], n, smoothing) for k in res}


def per_image_bleu(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, list[str]],
    n: int = 4,
    smoothing: Literal["exp", "none"] = "exp",
) -> dict[Hashable, float]:
    """The research report's measure: sentence BLEU-n of each image's caption against that
    image's own references (uniform weights over orders 1..n, clipped counts and "closest"
    reference length exactly as pycocoevalcap's BleuScorer cooks them, same PTB tokens).

    ``smoothing="exp"`` (default) is sacreBLEU's sentence-BLEU smoothing (Chen & Cherry 2014,
    method 3): an order with no match gets precision 1/(2^j * guesses), j counting such orders,
    and orders longer than the caption are left out; no unigram match gives 0.
    ``smoothing="none"`` reproduces pycocoevalcap's per-image list (tiny epsilons only, so any
    order without a match drives the score to ~0). One JVM for tokenisation in total.
    """
    if not 1 <= n <= 4:
        raise ArtcapError(f"per_image_bleu: n must be 1..4 (BLEU-n), got {n}")
    if smoothing not in ("exp", "none"):
        raise ArtcapError(f"per_image_bleu: smoothing must be 'exp' or 'none', got {smoothing!r}")
    res, gts = _tokenized_pairs(predictions, references)
    return _per_image_bleu_from_tokens(gts, res, n, smoothing)


# --------------------------------------------------------------------------- diversity


def _normalise(caption: str) -> str:
    return " ".join(simple_tokenize(caption))  # case, whitespace and punctuation folded


def diversity(
    predictions: Mapping[Hashable, str], training_captions: Iterable[str] | None = None
) -> dict[str, float]:
    """How varied the generated captions are, after folding case, whitespace and punctuation
    (``artcap.text.tokenize``):

    - ``distinct_captions``: distinct captions / number of predictions (1.0 = all different);
    - ``vocabulary``: number of distinct words used over all predictions;
    - ``mean_length``: mean number of words per prediction;
    - ``copied_from_training``: share of predictions that appear verbatim among the training
      captions (only when ``training_captions`` is given).
    """
    if not predictions:
        raise ArtcapError("diversity: no predictions given; pass at least one {image_id: caption}")
    normalised = [_normalise(c) for c in predictions.values()]
    words = [w for c in normalised for w in c.split()]
    scores: dict[str, float] = {
        "distinct_captions": len(set(normalised)) / len(normalised),
        "vocabulary": len(set(words)),
        "mean_length": len(words) / len(normalised),
    }
    if training_captions is not None:
        training = {_normalise(c) for c in training_captions}
        scores["copied_from_training"] = sum(c in training for c in normalised) / len(normalised)
    return scores


def top_caption_share(predictions: Mapping[Hashable, str]) -> float:
    """The share of images given the most frequent caption (after ``diversity``'s folding of case,
    whitespace and punctuation): 1/n when every caption differs, 1.0 for one caption for all. "No caption
    for more than 2% of the paintings" is ``top_caption_share(...) <= 0.02``."""
    if not predictions:
        raise ArtcapError("top_caption_share: no predictions given; pass at least one {image_id: caption}")
    counts = Counter(_normalise(c) for c in predictions.values())
    return max(counts.values()) / len(predictions)


def collapse_scores(predictions: Mapping[Hashable, str]) -> dict[str, float]:
    """What a collapsing captioner loses first, for training-time monitoring: ``distinct`` (share of
    distinct captions), ``vocabulary`` (distinct words used) and ``top_caption_share``."""
    d = diversity(predictions)
    return {"distinct": d["distinct_captions"], "vocabulary": d["vocabulary"],
            "top_caption_share": top_caption_share(predictions)}


# --------------------------------------------------------------------------- grounding


def _cider_scorer(gts: dict, res: dict, ids: list[Hashable]) -> CiderScorer:
    scorer = CiderScorer(n=4, sigma=6.0)  # pycocoevalcap Cider's own defaults
    for k in ids:
        scorer += (res[k][0], gts[k])
    scorer.compute_doc_freq()
    return scorer


def _cider_per_image(gts: dict, res: dict):
    """pycocoevalcap's CIDEr-D per image (same arithmetic as ``Cider().compute_score``)."""
    scorer = _cider_scorer(gts, res, list(res))
    return np.asarray(scorer.compute_cider(), dtype=float)


def _grounding_per_image(gts: dict, res: dict) -> np.ndarray:
    """Per image (sorted id order): CIDEr-D against its own references minus against the next image's."""
    ids = sorted(res, key=str)
    if len(ids) < 2:
        raise ArtcapError("grounding needs at least 2 images (it compares each caption with another image's references)")
    rotated = {k: gts[ids[(i + 1) % len(ids)]] for i, k in enumerate(ids)}
    own = _cider_scorer(gts, res, ids)
    other = _cider_scorer(rotated, res, ids)
    # The rotated references are the same multiset of reference sets, hence the same idf.
    if own.document_frequency != other.document_frequency:
        raise RuntimeError("grounding: rotated references changed the CIDEr-D document frequencies")
    return np.asarray(own.compute_cider(), dtype=float) - np.asarray(other.compute_cider(), dtype=float)


def _grounding_from_tokens(gts: dict, res: dict) -> float:
    differences = _grounding_per_image(gts, res)
    return float(sum(differences.tolist()) / len(differences))


def grounding(predictions: Mapping[Hashable, str], references: Mapping[Hashable, list[str]]) -> float:
    """Does a caption describe *its* image rather than paintings in general?

    Mean over images of CIDEr-D(caption, own references) - CIDEr-D(caption, the references of the
    next image in sorted id order). Both use the same document frequencies (the rotated reference
    sets are the same multiset, checked at run time), so one caption for every image gives exactly
    0, captions that match their own image score > 0, and a shuffled assignment gives <= ~0.
    Ids that sort by style/artist (ArtEmis "style/painting") make neighbours similar paintings,
    so the value is a conservative estimate. Needs at least 2 images.
    """
    res, gts = _tokenized_pairs(predictions, references)
    return _grounding_from_tokens(gts, res)


# --------------------------------------------------------------------------- all together


def evaluate_captions(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, list[str]],
    training_captions: Iterable[str] | None = None,
    with_meteor: bool = True,
    statistics: bool = False,
) -> dict:
    """Every measure above from one tokenisation (one JVM, plus one for METEOR):

    ``{"coco": coco_scores, "paper_bleu": {"mean", "median", "per_image"} (BLEU-4, "exp"
    smoothing), "diversity": diversity(...), "grounding": float, or None for a single image}``.
    With ``statistics``, also ``"statistics"``: ``{table column: artcap.bootstrap.Statistic}`` for the COCO keys,
    "paper BLEU-4", "grounding", "distinct", "vocabulary", "mean_length", "copied" and "top caption share", over
    the images in sorted id order (see ``caption_statistics``).
    """
    res, gts = _tokenized_pairs(predictions, references)
    per_image = _per_image_bleu_from_tokens(gts, res, 4, "exp")
    values = list(per_image.values())
    parts: dict | None = {} if statistics else None
    result = {
        "coco": _coco_from_tokens(gts, res, with_meteor, parts),
        "paper_bleu": {"mean": statistics_mean(values), "median": statistics_median(values), "per_image": per_image},
        "diversity": diversity(predictions, training_captions),
        "grounding": _grounding_from_tokens(gts, res) if len(res) >= 2 else None,
    }
    if parts is not None:
        from . import bootstrap

        ids = list(res)  # sorted, as _tokenized_pairs orders them
        parts["paper BLEU-4"] = bootstrap.mean_of(values)
        if len(ids) >= 2:
            parts["grounding"] = bootstrap.mean_of(_grounding_per_image(gts, res))
        parts.update(caption_statistics([predictions[k] for k in ids], training_captions))
        result["statistics"] = parts
    return result


def caption_statistics(captions: list[str], training_captions: Iterable[str] | None = None) -> dict:
    """Per-caption rows of the measures that read only the captions (after ``diversity``'s folding), such that the
    rows' sum gives the measure: "distinct" (each caption weighs 1 / how many captions of the set equal it, so the
    weights add up to the number of distinct captions), "vocabulary" (each word spreads 1 over the captions that
    use it), "mean_length", "copied" (only with ``training_captions``) and "top caption share" (is it the set's
    most frequent caption). Counts are fixed on the whole set, as CIDEr-D's document frequencies are: a bootstrap
    resample that draws a painting twice neither turns its caption into a duplicate nor into a stock sentence."""
    from . import bootstrap

    normalised = [_normalise(c) for c in captions]
    copies = Counter(normalised)
    word_sets = [set(c.split()) for c in normalised]
    users = Counter(w for ws in word_sets for w in ws)
    top = copies.most_common(1)[0][0] if copies else None
    out = {
        "distinct": bootstrap.mean_of([1.0 / copies[c] for c in normalised]),
        "vocabulary": bootstrap.total_of([sum(1.0 / users[w] for w in ws) for ws in word_sets]),
        "mean_length": bootstrap.mean_of([len(c.split()) for c in normalised]),
        "top caption share": bootstrap.mean_of([c == top for c in normalised]),
    }
    if training_captions is not None:
        training = {_normalise(c) for c in training_captions}
        out["copied"] = bootstrap.mean_of([c in training for c in normalised])
    return out


# --------------------------------------------------------------------------- reporting

COUNT_COLUMNS = frozenset({"vocabulary", "mean_length"})


def _cell(value: object, column: str, count_columns: frozenset[str] | set[str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value).replace("|", "\\|")
    if isinstance(value, (int, float)):
        return f"{value:.1f}" if column in count_columns or isinstance(value, int) else f"{value:.3f}"
    raise ArtcapError(f"format_markdown_table: column {column!r} holds a {type(value).__name__}, not a number")


def format_markdown_table(
    rows: Mapping[str, Mapping[str, object]],
    columns: list[str],
    row_header: str = "",
    count_columns: frozenset[str] | set[str] = COUNT_COLUMNS,
    intervals: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
    """A GitHub-flavoured markdown table: one line per row (row name first), one column per
    entry of ``columns``, numbers right-aligned with 3 decimals, counts (ints, and the columns in
    ``count_columns``) with 1; a missing value shows as "–". With ``intervals`` ({row: {column: [low, high]}}),
    a value that has one is followed by it: "0.098 [0.085, 0.112]"."""
    header = "| " + " | ".join([row_header.replace("|", "\\|")] + [c.replace("|", "\\|") for c in columns]) + " |"
    rule = "|---|" + "".join("---:|" for _ in columns)
    lines = [header, rule]
    for name, values in rows.items():
        bounds = (intervals or {}).get(name, {})
        cells = [str(name).replace("|", "\\|")]
        for c in columns:
            cell = _cell(values.get(c), c, count_columns)
            low, high = bounds.get(c) or (None, None)
            if cell != "–" and low is not None and high is not None:
                cell += f" [{_cell(float(low), c, count_columns)}, {_cell(float(high), c, count_columns)}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- model selection while training


def selection_scores(predictions: Mapping[Hashable, str], references: Mapping[Hashable, list[str]]) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr-D on artcap's own tokens (no Java, no JVM start): what training uses
    to pick the best epoch by a caption metric. Close to, not equal to, the COCO protocol's numbers."""
    ids = [k for k in predictions if references.get(k)]
    res = {k: [" ".join(simple_tokenize(predictions[k]))] for k in ids}
    gts = {k: [" ".join(simple_tokenize(r)) for r in references[k]] for k in ids}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"bleu4": float(bleu[3]), "cider": float(_cider_per_image(gts, res).mean())}
