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
from typing import Any, Callable, Sequence

import numpy as np

from .data import EMOTIONS, Annotation
from .emotion import emotion_histograms, normalise, score_emotion_classifier
from .text_emotion import (dominant_emotions, emotional_alignment, held_out_human_captions,
                           histograms_by_image, score_text_classifier, steerability, text_classifier_for, utterances)

log = logging.getLogger("artcap")


def emotion_evaluation(captioner, annotations: Sequence[Annotation], splits: dict[str, list[str]], ids: list[str],
                       features: np.ndarray, captions: dict[str, list[str]],
                       caption_under: Callable[[str], list[str]], cache_dir: Path | None) -> dict[str, Any] | None:
    """Every emotion measure of the split `ids` (None when the data has no emotions, e.g. Flickr8k).
    `captions`: each system's captions of `ids`; `caption_under(emotion)`: the model's captions under an emotion."""
    if any(a.emotion is None for a in annotations):
        return None
    # the model folder's judge, else one trained on the data's TRAIN utterances (cached)
    judge = captioner.folder.text_judge or text_classifier_for(annotations, splits, cache_dir)
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
    if captioner.is_grounded:
        result["steerability"] = steerability({e: dict(zip(ids, caption_under(e))) for e in EMOTIONS}, judge)
    return result


def render_emotion_markdown(scores: dict[str, Any]) -> list[str]:
    """The emotion section of scores.md."""
    align = scores["alignment"]
    lines = ["", "## Emotion", "",
             f"Emotional alignment over the {scores['majority_paintings']} paintings with a > half majority emotion "
             "(the text classifier's judgement of each caption = the painting's dominant human emotion):", "",
             "| system | alignment |", "|---|---:|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in align.items() if value is not None]
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
        lines += ["", "Steerability (captions asked for each emotion, judged as it; chance 0.111):", "",
                  "| " + " | ".join(steer) + " |", "|" + "---:|" * len(steer),
                  "| " + " | ".join(f"{v:.2f}" for v in steer.values()) + " |"]
    return lines
