"""The emotion part of `artcap evaluate` (ArtEmis data only): how well captions carry the feeling a painting
gives people, and how well a grounded model can be steered.

- emotional alignment (ArtEmis' definition): the share of captions whose emotion, as the text classifier judges it,
  is the painting's dominant human emotion, over paintings where one emotion has more than half the votes; next
  to the same share for one held-out human utterance per painting;
- steerability (grounded models): caption every painting under each of the 9 emotions, and report the share
  judged as the emotion asked for, per emotion and overall (chance: 1/9);
- the image -> emotion classifier's scores (when the model has one) next to the majority guess and the prior;
- the text classifier's own accuracy on the split's human utterances, so its judgements can be weighed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import bootstrap
from .data import EMOTIONS, Annotation
from .emotion import emotion_histograms, normalise, score_emotion_classifier
from .text_emotion import (EmotionJudge, dominant_emotions, emotional_alignment, held_out_human_captions,
                           histograms_by_image, score_text_classifier, steerability, text_classifier_for, utterances)

log = logging.getLogger("artcap")


def text_judge(captioner, annotations: Sequence[Annotation], splits: dict[str, list[str]],
               cache_dir: Path | None) -> EmotionJudge:
    """The model folder's text emotion classifier, else one trained on the data's TRAIN utterances (cached)."""
    return captioner.folder.text_judge or text_classifier_for(annotations, splits, cache_dir)


def alignment_statistic(captions: Sequence[str], ids: Sequence[str], dominant: Mapping[str, str],
                        judge: EmotionJudge) -> bootstrap.Pooled:
    """Emotional alignment as per-painting rows [caption judged as the dominant emotion, painting has one]: the
    share over the paintings with a dominant emotion, and how it moves when the paintings are resampled."""
    judged = judge.predict(list(captions)) if len(captions) else []
    wanted = [dominant.get(i) for i in ids]
    return bootstrap.Pooled(np.array([[w is not None and j == w, w is not None] for j, w in zip(judged, wanted)],
                                     dtype=float).reshape(-1, 2), bootstrap.ratio)


def steerability_statistics(captions_by_emotion: Mapping[str, Sequence[str]], judge: EmotionJudge
                            ) -> dict[str, bootstrap.Statistic]:
    """Steerability per emotion and "overall" as per-painting rows (captions of the same paintings, in the same
    order, under each emotion)."""
    hits = {e: np.array([j == e for j in judge.predict(list(caps))], dtype=float)
            for e, caps in captions_by_emotion.items() if len(caps)}
    out: dict[str, bootstrap.Statistic] = {e: bootstrap.mean_of(h) for e, h in hits.items()}
    if hits:
        together = np.stack(list(hits.values()), axis=1)  # [paintings, emotions]
        out["overall"] = bootstrap.Pooled(np.stack([together.sum(1), np.full(len(together), together.shape[1])],
                                                   axis=1), bootstrap.ratio)
    return out


def emotion_statistics(judge: EmotionJudge, annotations: Sequence[Annotation], ids: list[str],
                       captions: dict[str, list[str]], steered: Mapping[str, Sequence[str]] | None
                       ) -> dict[str, bootstrap.Statistic]:
    """{"alignment: NAME" per system, "alignment: human", "steerability: EMOTION"..., "steerability"}, each over
    the paintings in sorted id order (the order of every other measure's statistic, so one resample draws the same
    paintings for all)."""
    order = sorted(range(len(ids)), key=lambda n: str(ids[n]))
    ids = [ids[n] for n in order]
    captions = {name: [caps[n] for n in order] for name, caps in captions.items()}
    steered = {e: [caps[n] for n in order] for e, caps in (steered or {}).items()}
    dominant = dominant_emotions(histograms_by_image(annotations, ids))
    out = {f"alignment: {name}": alignment_statistic(caps, ids, dominant, judge) for name, caps in captions.items()}
    human = held_out_human_captions(annotations, ids)
    out["alignment: human"] = alignment_statistic([human.get(i, "") for i in ids], ids, dominant, judge)
    for emotion, statistic in steerability_statistics(steered or {}, judge).items():
        out["steerability" if emotion == "overall" else f"steerability: {emotion}"] = statistic
    return out


def emotion_evaluation(captioner, annotations: Sequence[Annotation], splits: dict[str, list[str]], ids: list[str],
                       features: np.ndarray, captions: dict[str, list[str]],
                       caption_under: Callable[[str], list[str]], cache_dir: Path | None,
                       weights: np.ndarray | None = None) -> dict[str, Any] | None:
    """Every emotion measure of the split `ids` (None when the data has no emotions, e.g. Flickr8k).
    `captions`: each system's captions of `ids`; `caption_under(emotion)`: the model's captions under an emotion.
    With bootstrap `weights` ([B, len(ids)]), "intervals" gives each alignment and steerability its 95% interval
    (keys as ``emotion_statistics`` names them)."""
    if any(a.emotion is None for a in annotations):
        return None
    judge = text_judge(captioner, annotations, splits, cache_dir)
    dominant = dominant_emotions(histograms_by_image(annotations, ids))
    alignment = {name: emotional_alignment(dict(zip(ids, caps)), dominant, judge) for name, caps in captions.items()}
    alignment["human"] = emotional_alignment(held_out_human_captions(annotations, ids), dominant, judge)
    texts, labels = utterances(annotations, ids)
    result: dict[str, Any] = {
        "alignment": alignment,
        "majority_paintings": sum(d is not None for d in dominant.values()),
        "text_classifier": score_text_classifier(judge, texts, labels, utterances(annotations, splits["train"])[1]),
    }
    if captioner.emotion_head is not None:
        pooled = features if features.ndim == 2 else features.mean(axis=1)
        probs = captioner.emotion_head.predict(pooled)
        prior = normalise(emotion_histograms(annotations, splits["train"])).mean(axis=0)
        result["image_classifier"] = score_emotion_classifier(probs, emotion_histograms(annotations, ids), prior,
                                                              captioner.emotion_head.dominant(probs))
    steered = {e: caption_under(e) for e in EMOTIONS} if captioner.is_grounded else None
    if steered is not None:
        result["steerability"] = steerability({e: dict(zip(ids, caps)) for e, caps in steered.items()}, judge)
    if weights is not None:
        result["intervals"] = {name: bootstrap.interval(statistic, weights) for name, statistic
                               in emotion_statistics(judge, annotations, ids, captions, steered).items()}
    return result


def render_emotion_markdown(scores: dict[str, Any]) -> list[str]:
    """The emotion section of scores.md."""
    align, intervals = scores["alignment"], scores.get("intervals", {})

    def with_interval(value: float, key: str, digits: int = 3) -> str:
        low, high = intervals.get(key) or (None, None)
        return f"{value:.{digits}f}" + (f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else "")

    lines = ["", "## Emotion", "",
             f"Emotional alignment over the {scores['majority_paintings']} paintings with a > half majority emotion "
             "(the text classifier's judgement of each caption = the painting's dominant human emotion):", "",
             "| system | alignment |", "|---|---:|"]
    lines += [f"| {name} | {with_interval(value, f'alignment: {name}')} |" for name, value in align.items()
              if value is not None]
    text = scores["text_classifier"]
    lines += ["", f"Text classifier on the split's {text['utterances']} human utterances: accuracy "
                  f"{text['accuracy']:.3f} (majority guess {text.get('majority_accuracy') or 0:.3f}), macro recall "
                  f"{text['macro_recall']:.3f}."]
    if "image_classifier" in scores:
        image = scores["image_classifier"]
        lines += ["", "| image -> emotion | accuracy | macro recall | KL |", "|---|---:|---:|---:|",
                  f"| classifier | {image['accuracy']:.3f} | {image['macro_recall']:.3f} | {image['kl']:.3f} |",
                  f"| majority guess / prior | {image['majority_accuracy']:.3f} | "
                  f"{image['majority_macro_recall']:.3f} | {image['prior_kl']:.3f} |"]
    if "steerability" in scores:
        steer = scores["steerability"]
        keys = {e: "steerability" if e == "overall" else f"steerability: {e}" for e in steer}
        lines += ["", "Steerability (captions asked for each emotion, judged as it; chance 0.111):", "",
                  "| " + " | ".join(steer) + " |", "|" + "---:|" * len(steer),
                  "| " + " | ".join(with_interval(v, keys[e], 2) for e, v in steer.items()) + " |"]
    return lines
