"""`artcap compare A B`: two models scored on the same paintings, every measure's paired difference A - B with its
95% bootstrap interval and a paired-bootstrap p-value (``artcap.bootstrap.paired``).

Both models caption the same split of the same data, each with its own decoding settings, and are scored exactly
as `artcap evaluate` scores them. Each bootstrap resample draws one set of paintings and recomputes every measure
for both models on it, so what the paintings have in common (some are easy to caption for any model) cancels out
of the difference. The verdict says which model is better only when the interval excludes 0; "no difference
shown" otherwise. Emotional alignment and steerability judge both models' captions with model A's text classifier.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import bootstrap, settings
from .captioner import Captioner
from .coherence import DEFECTS
from .data import EMOTIONS
from .decode import DecodingConfig
from .errors import ArtcapError
from .evaluate import (TABLE_COLUMNS, EvaluationSet, add_scoring_arguments, caption_all,
                       load_evaluation_set, score_system)
from .evaluate_emotion import emotion_statistics, text_judge
from .metrics import COCO_KEYS, java_available

log = logging.getLogger("artcap")

HIGHER_IS_BETTER = frozenset([*COCO_KEYS, "paper BLEU-4", "grounding", "distinct", "vocabulary", "alignment",
                              "steerability", *(f"steerability: {e}" for e in EMOTIONS)])
LOWER_IS_BETTER = frozenset(["copied", "top caption share", *DEFECTS])
MEASURE_ORDER = [*TABLE_COLUMNS, *DEFECTS, "alignment", "steerability", *(f"steerability: {e}" for e in EMOTIONS)]
NO_DIFFERENCE = "no difference shown"


def verdict(measure: str, bounds: list[float | None], name_a: str, name_b: str) -> str:
    """Which model the paired interval favours, or NO_DIFFERENCE when it contains 0."""
    if not bootstrap.excludes_zero(bounds):
        return NO_DIFFERENCE
    a_higher = bounds[0] > 0
    if measure in HIGHER_IS_BETTER or measure in LOWER_IS_BETTER:
        a_better = a_higher == (measure in HIGHER_IS_BETTER)
        return f"{name_a if a_better else name_b} better"
    return f"{name_a if a_higher else name_b} higher"  # e.g. mean_length: neither direction is better


def finite_or_none(value: float) -> float | None:
    """None for a measure undefined on these paintings (alignment without a majority emotion): JSON has no NaN."""
    return value if np.isfinite(value) else None


def _check_same_paintings(a: EvaluationSet, b: EvaluationSet, name_a: str, name_b: str, split: str) -> None:
    if sorted(a.ids) != sorted(b.ids):
        raise ArtcapError(f"{name_a} and {name_b} have different '{split}' paintings (their splits.json differ), so "
                          f"no paired comparison; compare them on data neither trained on with --split all")
    differing = next((i for i in a.ids if a.references[i] != b.references[i]), None)
    if differing is not None:
        raise ArtcapError(f"{name_a} and {name_b} process references differently (painting {differing}: their "
                          f"presets differ), so their scores are not comparable; compare models of one preset")


def paired_measures(a: dict[str, bootstrap.Statistic], b: dict[str, bootstrap.Statistic], name_a: str, name_b: str,
                    weights) -> dict[str, Any]:
    """{"a", "b", "measures": {measure: {"a", "b", "difference", "interval", "p_value", "verdict"}}}: every measure
    both have, in MEASURE_ORDER, A - B on the same resampled paintings."""
    measures = {}
    for measure in [m for m in MEASURE_ORDER if m in a and m in b]:
        result = bootstrap.paired(a[measure], b[measure], weights)
        measures[measure] = {"a": finite_or_none(a[measure].value()), "b": finite_or_none(b[measure].value()),
                             **result,
                             "verdict": verdict(measure, result["interval"], name_a, name_b)}
    return {"a": name_a, "b": name_b, "measures": measures}


def model_emotion_statistics(judge, annotations, ids: list[str], captions: list[str],
                             steered: dict[str, list[str]] | None) -> dict[str, bootstrap.Statistic]:
    """A model's "alignment" and "steerability[: EMOTION]" statistics (`steered`: its captions under each emotion)."""
    emotion = emotion_statistics(judge, annotations, ids, {"model": captions}, steered)
    return {"alignment": emotion["alignment: model"],
            **{k: v for k, v in emotion.items() if k.startswith("steerability")}}


def method(resamples: int) -> str:
    """How the paired intervals and p-values are computed, as reports say it."""
    return (f"paired percentile bootstrap, {resamples} resamples of the paintings (seed {bootstrap.DEFAULT_SEED}); "
            f"p: two-sided, shift method")


def _score(captioner: Captioner, evalset: EvaluationSet, judge, with_meteor: bool, progress: bool,
           decoding_overrides: dict[str, Any]) -> dict:
    """Every statistic of one model on its evaluation set (statistics over the paintings in sorted id order)."""
    decoding = captioner.resolve_decoding(**decoding_overrides)
    captions = caption_all(captioner, evalset.features, progress=progress, decoding=decoding,
                           desc=f"captioning ({captioner.model_id})")
    training = [c for cs in evalset.train_captions for c in cs] or None
    scores = score_system(evalset.ids, captions, evalset.references, training, with_meteor)
    statistics = dict(scores["statistics"])
    if judge is not None:
        steered = ({e: caption_all(captioner, evalset.features, progress=False, decoding=decoding, emotion=e)
                    for e in EMOTIONS} if captioner.is_grounded else None)
        statistics.update(model_emotion_statistics(judge, evalset.annotations, evalset.ids, captions, steered))
    return {"decoding": decoding.to_dict(), "statistics": statistics, "captions": captions}


def compare(model_a: str | Path | None, model_b: str | Path | None, data: str | Path, images: str | Path,
            split: str = "test", *, with_meteor: bool = True, resamples: int = bootstrap.DEFAULT_RESAMPLES,
            feature_cache: str = "", skip_missing: bool = False, progress: bool = True,
            backend: str = "auto", decoding_a: dict[str, Any] | None = None,
            decoding_b: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score both models on the same paintings; returns {"a", "b", ..., "measures": {measure: {"a", "b",
    "difference", "interval", "p_value", "verdict"}} in MEASURE_ORDER, "captions": {"ids", "a", "b"}}.
    `decoding_a`/`decoding_b`: DecodingConfig settings changed for that side (one model, two decodings)."""
    overrides = [decoding_a or {}, decoding_b or {}]
    if with_meteor and not java_available():
        log.warning("java not found on PATH: METEOR is left out (install a Java runtime to get it)")
        with_meteor = False
    captioners = [Captioner.load(m, backend=backend) for m in (model_a, model_b)]
    names = [c.model_id + "".join(f", {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changed.items())
             for c, changed in zip(captioners, overrides)]
    if names[0] == names[1]:
        names = [f"A ({names[0]})", f"B ({names[1]})"]
    sets = [load_evaluation_set(c, data, images, split, feature_cache, skip_missing, progress, backend)
            for c in captioners]
    _check_same_paintings(sets[0], sets[1], names[0], names[1], split)
    judge = None
    if all(a.emotion is not None for a in sets[0].annotations):
        judge = text_judge(captioners[0], sets[0].annotations, sets[0].splits,
                           Path(feature_cache) if feature_cache else None)
    scored = [_score(c, s, judge, with_meteor, progress, o) for c, s, o in zip(captioners, sets, overrides)]
    weights = bootstrap.resample_weights(len(sets[0].ids), resamples)
    paired = paired_measures(scored[0]["statistics"], scored[1]["statistics"], names[0], names[1], weights)
    return {**paired, "a_path": str(captioners[0].folder.path),
            "b_path": str(captioners[1].folder.path), "data": str(data), "split": split,
            "paintings": len(sets[0].ids), "decoding": {"a": scored[0]["decoding"], "b": scored[1]["decoding"]},
            "meteor": with_meteor,
            "method": method(resamples),
            "captions": {"ids": sets[0].ids, "a": scored[0]["captions"], "b": scored[1]["captions"]}}


# ---- rendering ----------------------------------------------------------------------------------------------------

def _number(value: float | None, measure: str, signed: bool = False) -> str:
    if value is None:
        return "–"
    digits = 1 if measure in ("vocabulary", "mean_length") else 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cells(result: dict) -> list[list[str]]:
    header = ["measure", result["a"], result["b"], "A - B", "95% interval", "p", "verdict"]
    rows = [header]
    for measure, m in result["measures"].items():
        low, high = m["interval"]
        bounds = "–" if low is None else f"[{_number(low, measure, True)}, {_number(high, measure, True)}]"
        rows.append([measure, _number(m["a"], measure), _number(m["b"], measure),
                     _number(m["difference"], measure, True), bounds,
                     "–" if m["p_value"] is None else f"{m['p_value']:.3f}", m["verdict"]])
    return rows


def render_markdown(result: dict) -> str:
    rows = _cells(result)
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in rows[0]) + " |",
             "|---|" + "---:|" * (len(rows[0]) - 2) + "---|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def render_text(result: dict) -> str:
    rows = _cells(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{result['a']} vs {result['b']}: {result['paintings']} paintings of the {result['split']} split; "
             f"{result['method']}"]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


# ---- CLI ----------------------------------------------------------------------------------------------------------

def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="two models on the same paintings: paired differences with intervals",
                       description="Caption the same paintings with two models (each with its own decoding), score "
                                   "both as evaluate does, and report every measure's difference A - B with its 95% "
                                   "paired bootstrap interval and p-value. A model is called better only when the "
                                   "interval excludes 0.")
    p.add_argument("model_a", metavar="A", help="a shipped model's name, a model folder or a run folder")
    p.add_argument("model_b", metavar="B", help="the model to compare A with")
    add_scoring_arguments(p, "models'")
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text", help="what to print")
    for side in ("a", "b"):
        p.add_argument(f"--decoding-{side}", dest=f"decoding_{side}", action="append", default=[],
                       metavar="SETTING=VALUE", help=f"change one decoding setting of model {side.upper()} "
                       f"(repeatable), e.g. --decoding-{side} coherent=false: one model, two decodings")
    p.set_defaults(func=run_compare)


def decoding_settings(items: list[str], flag: str) -> dict[str, Any]:
    """["coherent=false", "beam=3"] -> {"coherent": False, "beam": 3}, each read and checked as its flag would be."""
    values = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals:
            raise ArtcapError(f"{flag} {item!r}: expected SETTING=VALUE, e.g. {flag} coherent=false")
        values[name.strip()] = settings.parse_checked(DecodingConfig, name.strip(), text, flag)
    return values


def run_compare(args) -> int:
    sides = {side: decoding_settings(getattr(args, f"decoding_{side}"), f"--decoding-{side}") for side in "ab"}
    result = compare(args.model_a, args.model_b, args.data, args.images, args.split, with_meteor=not args.no_meteor,
                     resamples=args.resamples, feature_cache=args.cache, skip_missing=args.skip_missing,
                     progress=not getattr(args, "quiet", False), backend=args.backend,
                     decoding_a=sides["a"], decoding_b=sides["b"])
    if args.format == "json":
        sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "captions"}, indent=2) + "\n")
    else:
        sys.stdout.write(render_markdown(result) if args.format == "markdown" else render_text(result))
    return 0

