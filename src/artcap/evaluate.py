"""`artcap evaluate`: caption every painting of a split and score it the way the field would accept.

Scoring protocol (see artcap.metrics for the arithmetic):
- references: *all* utterances of each painting in the data, processed by the model's preset exactly
  as its training text was (``artcap.data.references``), so scores do not depend on caption order;
- tokenisation: the COCO protocol's Stanford PTB tokenizer (lower-cased, punctuation removed) for
  predictions and references alike (``artcap.metrics``; without Java, artcap's own tokenizer);
- COCO caption metrics via pycocoevalcap: corpus BLEU-1..4 (closest reference length), METEOR 1.5
  (needs Java), ROUGE-L, CIDEr-D;
- the research report's measure: smoothed sentence BLEU-4 of each painting against its own
  references, as mean/median and listed for the first 20 paintings of the split;
- diversity: share of distinct captions, distinct words, mean length, share copied verbatim from
  the run's training captions;
- grounding: mean CIDEr-D against a painting's own references minus against the next painting's;
- top caption share: the share of paintings given the most frequent caption (a stock sentence's reach);
- coherence: the share of captions that mix genders for one subject, end on a dangling word, repeat a clause or
  leave a clause unfinished (``artcap.coherence``);
- the human (leave-one-out) row: what one person achieves against the others (``human_leave_one_out``);
- a 95% bootstrap interval for every number of every row: paintings resampled, each corpus measure recomputed
  from per-painting statistics (``artcap.bootstrap``).

The split comes from the model folder's (or its run's) ``splits.json``; without one it is recreated
from the data with the default split seed (2021), which is what ``artcap train`` does by default.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import bootstrap
from .baselines import ConstantCaptioner, NearestNeighbourCaptioner, constant_caption
from .captioner import Captioner
from . import settings
from .checkpoint import read_splits
from .coherence import DEFECTS, coherence_flags
from .decode import DecodingConfig
from .evaluate_emotion import emotion_evaluation, render_emotion_markdown
from .features import FeatureView
from .config import config_from
from .data import SPLIT_SEED, read_annotations, references
from .errors import ArtcapError
from .io import atomic_write_json, atomic_write_text
from .metrics import COCO_KEYS, evaluate_captions, format_markdown_table, java_available, top_caption_share

log = logging.getLogger("artcap")

SPLITS = ("test", "val", "all")
FIRST_N_PAPER = 20
TABLE_COLUMNS = [*COCO_KEYS, "paper BLEU-4", "grounding", "distinct", "vocabulary", "mean_length", "copied",
                 "top caption share"]
COHERENCE_COLUMNS = list(DEFECTS)
HUMAN_ROW = "human (leave-one-out)"
HUMAN_MIN_UTTERANCES = 5  # paintings with at least this many utterances enter the human row
TOKENISATION = "Stanford PTB tokenizer (COCO protocol), lower-cased, punctuation removed"


@dataclass
class EvaluationSet:
    """What every system is scored on: the split's image ids, their features and references."""

    ids: list[str]
    features: np.ndarray  # [len(ids), F]
    references: dict[str, list[str]]
    train_features: np.ndarray
    train_captions: list[list[str]]  # per training image, aligned with train_features
    train_references: dict[str, list[str]]
    split_source: str
    annotations: list = field(default_factory=list)  # the data's rows, for the emotion measures
    splits: dict = field(default_factory=dict)


def _splits_for(model_path: Path) -> tuple[dict[str, list[str]] | None, str]:
    for candidate in (model_path / "splits.json", model_path.parent / "splits.json"):
        if candidate.is_file():
            return read_splits(candidate), str(candidate)
    return None, ""


def pooled_rows(features: FeatureView, rows: list[int], chunk: int = 256) -> np.ndarray:
    """[n, C] pooled vectors of the given rows (a grid's mean is its pooled vector), read a chunk at a time."""
    out = np.zeros((len(rows), features.dim), np.float32)
    for s in range(0, len(rows), chunk):
        block = features[np.asarray(rows[s : s + chunk], dtype=np.int64)]
        out[s : s + chunk] = block if block.ndim == 2 else block.mean(axis=1)
    return out


def load_evaluation_set(captioner: Captioner, data: str | Path, images: str | Path, split: str,
                        feature_cache: str = "", skip_missing: bool = False, progress: bool = True,
                        backend: str = "auto") -> EvaluationSet:
    """Read the data, reuse (or extract) cached features with the model's encoder, pick the split."""
    from .corpus import load_corpus

    if split not in SPLITS:
        raise ArtcapError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    model_path = captioner.folder.path
    encoder = captioner.folder.encoder_spec
    preset = captioner.config.preset
    config = config_from({"data.captions": str(data), "data.images": str(images), "data.preset": preset,
                          "encoder.name": encoder.name, "encoder.weights": encoder.weights_argument(model_path),
                          "encoder.image_size": encoder.image_size or 0, "encoder.feature_cache": feature_cache,
                          "data.skip_missing": skip_missing, "encoder.num_workers": 0}, str(model_path))

    annotations = read_annotations(data, images, skip_missing=skip_missing)  # read once, used for both
    splits, source = _splits_for(model_path)
    if splits is not None:
        present = {a.image_id for a in annotations}
        if not present & set(splits.get("train", [])):
            # A user's own data set: the model's training paintings are not in it.
            if split != "all":
                raise ArtcapError(f"{data}: none of the model's training paintings ({source}) is in this data, so "
                                  f"it has no '{split}' split of this model; score every painting with --split all")
            splits, source = None, ""
    if splits is None:
        if split != "all":
            log.warning("no splits.json beside the model: recreating the split from %s with the default seed %d",
                        data, SPLIT_SEED)
        source = f"recreated with make_splits(seed={SPLIT_SEED})"
    # Without splits, prepare() makes them exactly as training did (make_splits, SPLIT_SEED).
    corpus = load_corpus(config, splits, device=captioner.device, progress=progress, annotations=annotations,
                         spec=captioner.feature_spec, backend=backend)
    ids = corpus.data.split_ids(split)
    if not ids:
        raise ArtcapError(f"{data}: the '{split}' split has no paintings in this data; try --split all")
    refs = references(corpus.annotations, preset, ids)
    train_ids = corpus.data.split_ids("train")
    return EvaluationSet(
        ids=ids,
        features=corpus.features[np.asarray([corpus.image_row[i] for i in ids])],
        references=refs,
        train_features=pooled_rows(corpus.features, [corpus.image_row[i] for i in train_ids]),
        train_captions=[[" ".join(t) for t in corpus.data.captions[i]] for i in train_ids],
        train_references=references(corpus.annotations, preset, train_ids),
        split_source=source,
        annotations=corpus.annotations,
        splits=corpus.data.splits,
    )


def caption_all(system: Any, features: np.ndarray, batch_size: int = 64, progress: bool = True,
                desc: str = "captioning", **decoding: Any) -> list[str]:
    """Captions for every feature row, in batches, with a progress bar."""
    out: list[str] = []
    with tqdm(total=len(features), unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for s in range(0, len(features), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(features[s : s + batch_size]))
            out.extend(system.caption(batch, **decoding))
            bar.update(len(batch))
    return out


def score_system(ids: list[str], captions: list[str], refs: dict[str, list[str]],
                 training_captions: list[str] | None, with_meteor: bool) -> dict:
    """Every measure for one system. Besides the public numbers: "per_image_bleu4" and "statistics" (each table
    column as an ``artcap.bootstrap.Statistic`` over the paintings in sorted id order), which stay out of JSON."""
    predictions = dict(zip(ids, captions))
    scores = evaluate_captions(predictions, {i: refs[i] for i in ids}, training_captions, with_meteor,
                               statistics=True)
    scores["top_caption_share"] = top_caption_share(predictions)
    flags = coherence_flags(predictions[i] for i in sorted(ids, key=str))  # the statistics' painting order
    scores["coherence"] = flags.rates()
    scores["statistics"].update({name: bootstrap.mean_of(v) for name, v in flags.flags.items()})
    per_image = scores["paper_bleu"].pop("per_image")
    scores["paper_bleu"]["first_20"] = {i: per_image[i] for i in ids[:FIRST_N_PAPER]}
    scores["per_image_bleu4"] = per_image
    return scores


PRIVATE_KEYS = ("per_image_bleu4", "statistics")


def public(scores: dict) -> dict:
    """A system's scores without the per-painting data (what scores.json and --format json hold)."""
    return {k: v for k, v in scores.items() if k not in PRIVATE_KEYS}


def add_intervals(scores: dict, weights: np.ndarray) -> None:
    """scores["intervals"]: {table column: [low, high]}, the 95% bootstrap interval of every measure."""
    scores["intervals"] = {name: bootstrap.interval(statistic, weights)
                           for name, statistic in scores["statistics"].items()}


def table_row(scores: dict) -> dict[str, float | None]:
    d = scores["diversity"]
    return {**scores["coco"], "paper BLEU-4": scores["paper_bleu"]["mean"], "grounding": scores["grounding"],
            "distinct": d["distinct_captions"], "vocabulary": d["vocabulary"], "mean_length": d["mean_length"],
            "copied": d.get("copied_from_training"), "top caption share": scores.get("top_caption_share"),
            **scores.get("coherence", {})}


def scores_table(systems: dict[str, dict], human: dict | None = None) -> str:
    """Two markdown tables, the caption measures and the coherence rates, each value with its 95% interval."""
    rows = {name: table_row(s) for name, s in systems.items()}
    intervals = {name: s.get("intervals", {}) for name, s in systems.items()}
    if human is not None:
        rows[HUMAN_ROW] = human["row"]
        intervals[HUMAN_ROW] = human.get("intervals", {})
    return (format_markdown_table(rows, TABLE_COLUMNS, "system", intervals=intervals) + "\n"
            + format_markdown_table(rows, COHERENCE_COLUMNS, "system", intervals=intervals))


def human_leave_one_out(ids: list[str], refs: dict[str, list[str]], with_meteor: bool,
                        min_utterances: int = HUMAN_MIN_UTTERANCES,
                        resamples: int = bootstrap.DEFAULT_RESAMPLES) -> dict | None:
    """The human ceiling on the same paintings and metrics: each person scored against the other people.

    Over the paintings with at least `min_utterances` utterances: for each utterance index j < min_utterances
    (file order), utterance j of every painting is the "caption" and the painting's other utterances its
    references; every metric of the table is computed by `score_system`, then averaged over the indices j.
    So each number is what one human achieves against n-1 others (a model is scored against all n, which
    favours it slightly). The 95% intervals resample these paintings, the same draw for every j.
    Returns {"paintings", "utterance_indices", "references_per_painting", "row", "intervals"}, or
    None when fewer than 2 paintings qualify (grounding compares paintings)."""
    ids = [i for i in ids if len(refs[i]) >= min_utterances]
    if len(ids) < 2:
        return None
    rows, statistics = [], []
    for j in range(min_utterances):
        captions = [refs[i][j] for i in ids]
        others = {i: refs[i][:j] + refs[i][j + 1:] for i in ids}
        scores = score_system(ids, captions, others, None, with_meteor)
        rows.append(table_row(scores))
        statistics.append(scores["statistics"])
    averaged = {}
    for column in rows[0]:
        values = [r[column] for r in rows if r[column] is not None]
        averaged[column] = sum(values) / len(values) if values else None
    weights = bootstrap.resample_weights(len(ids), resamples)
    intervals = {name: bootstrap.interval(bootstrap.Averaged(tuple(s[name] for s in statistics)), weights)
                 for name in statistics[0]}
    return {"paintings": len(ids), "utterance_indices": list(range(min_utterances)),
            "references_per_painting": sum(len(refs[i]) - 1 for i in ids) / len(ids), "row": averaged,
            "intervals": intervals}


def evaluate(model_or_run: str | Path | None, data: str | Path, images: str | Path, split: str = "test", *,
             with_meteor: bool = True, out_dir: str | Path | None = None, baselines: bool = False,
             feature_cache: str = "", skip_missing: bool = False, progress: bool = True, backend: str = "auto",
             resamples: int = bootstrap.DEFAULT_RESAMPLES, **decoding_overrides: Any) -> dict:
    """Caption the split with the model (default: the shipped one) and score it; with ``baselines``
    also the nearest-neighbour and constant baselines. Any DecodingConfig field given as a keyword
    (beam=1) changes the model's decoding. Every measure of every row comes with a 95% bootstrap interval
    (``resamples`` draws of the paintings). Returns the scores dict (also written to
    ``out_dir``: predictions.json, scores.json, scores.md)."""
    started = time.perf_counter()
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ArtcapError(f"--out {out_dir}: is a file; --out names a folder to write predictions.json, "
                          f"scores.json and scores.md into")
    captioner = Captioner.load(model_or_run, backend=backend)
    decoding = captioner.resolve_decoding(**decoding_overrides)
    if with_meteor and not java_available():
        log.warning("java not found on PATH: METEOR is left out (install a Java runtime to get it)")
        with_meteor = False
    evalset = load_evaluation_set(captioner, data, images, split, feature_cache, skip_missing, progress, backend)

    t0 = time.perf_counter()
    captions = {captioner.model_id: caption_all(captioner, evalset.features, progress=progress, decoding=decoding)}
    seconds = {"decoding": time.perf_counter() - t0}
    if baselines:
        t0 = time.perf_counter()
        captions.update(baseline_captions(evalset, data))
        seconds["baselines"] = time.perf_counter() - t0

    training = [c for cs in evalset.train_captions for c in cs] or None
    t0 = time.perf_counter()
    weights = bootstrap.resample_weights(len(evalset.ids), resamples)
    systems = {}
    for name, caps in tqdm(captions.items(), desc="scoring", unit="system", disable=not progress or len(captions) == 1):
        systems[name] = score_system(evalset.ids, caps, evalset.references, training, with_meteor)
        add_intervals(systems[name], weights)
    seconds["metrics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    human = human_leave_one_out(evalset.ids, evalset.references, with_meteor, resamples=resamples)
    seconds["human"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emotion = emotion_evaluation(
        captioner, evalset.annotations, evalset.splits, evalset.ids, evalset.features, captions,
        lambda e: caption_all(captioner, evalset.features, progress=False, decoding=decoding, emotion=e),
        Path(feature_cache) if feature_cache else None, weights)
    seconds["emotion"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started

    result = {
        "model": captioner.model_id,
        "model_path": str(captioner.folder.path),
        "data": str(data),
        "images": str(images),
        "split": split,
        "split_source": evalset.split_source,
        "paintings": len(evalset.ids),
        "references_per_painting": sum(len(evalset.references[i]) for i in evalset.ids) / len(evalset.ids),
        "preset": captioner.config.preset,
        "decoding": decoding.to_dict(),
        "tokenisation": TOKENISATION if java_available() else "artcap.text.tokenize (no Java found)",
        "meteor": with_meteor,
        "intervals": f"95% percentile bootstrap, {resamples} resamples of the paintings (seed {bootstrap.DEFAULT_SEED})",
        "seconds": seconds,
        "systems": {name: public(s) for name, s in systems.items()},
    }
    if baselines:
        result["constant_caption"] = captions["constant"][0]
    if human is not None:
        result["human_leave_one_out"] = human
    if emotion is not None:
        result["emotion"] = emotion
    result["table"] = scores_table(systems, human)
    if out_dir is not None:
        write_outputs(Path(out_dir), result, evalset, captions, systems)
    return result


def baseline_captions(evalset: EvaluationSet, data: str | Path) -> dict[str, list[str]]:
    """The nearest-neighbour and constant baselines' captions of the evaluation paintings."""
    if not evalset.train_captions:
        raise ArtcapError(f"{data}: no training paintings of this model in the data, so no baselines; "
                          f"drop --baselines or evaluate on the model's own data")
    nn = NearestNeighbourCaptioner(evalset.train_features, evalset.train_captions)
    constant = ConstantCaptioner(constant_caption([c for cs in evalset.train_captions for c in cs],
                                                  evalset.train_references))
    pooled = evalset.features if evalset.features.ndim == 2 else evalset.features.mean(axis=1)
    return {nn.name: nn.caption(pooled), constant.name: constant.caption(evalset.features)}


def write_outputs(out: Path, result: dict, evalset: EvaluationSet, captions: dict[str, list[str]],
                  systems: dict[str, dict]) -> None:
    model = result["model"]
    records = []
    for n, image in enumerate(evalset.ids):
        record = {"image": image, "caption": captions[model][n], "references": evalset.references[image],
                  "bleu4": systems[model]["per_image_bleu4"][image]}
        others = {name: caps[n] for name, caps in captions.items() if name != model}
        if others:
            record["baselines"] = others
        records.append(record)
    atomic_write_json(out / "predictions.json", records)
    atomic_write_json(out / "scores.json", {k: v for k, v in result.items() if k != "table"})
    atomic_write_text(out / "scores.md", render_markdown(result))


def render_markdown(result: dict) -> str:
    d = result["decoding"]
    lines = [
        f"# Evaluation of `{result['model']}` on the {result['split']} split",
        "",
        f"{result['paintings']} paintings of `{result['data']}` (split: {result['split_source'] or 'all paintings'}), "
        f"{result['references_per_painting']:.1f} references each (preset `{result['preset']}`). "
        f"Decoding: {', '.join(f'{k} {v}' for k, v in d.items())}. Tokenisation: {result['tokenisation']}.",
        "",
        result["table"],
        "paper BLEU-4: mean smoothed sentence BLEU-4 per painting (the research report's measure); "
        "grounding: CIDEr-D against own references minus against another painting's (0 = generic); "
        "distinct: share of distinct captions; copied: share copied verbatim from training captions; "
        "top caption share: share of paintings given the most frequent caption; mixed genders, dangling end, "
        "repeated clause, unfinished clause: share of captions with that defect (docs/evaluation.md, Coherence). "
        f"In brackets: the {result['intervals']}.",
    ]
    if "human_leave_one_out" in result:
        h = result["human_leave_one_out"]
        lines += ["", f"{HUMAN_ROW}: on the {h['paintings']} paintings with at least {len(h['utterance_indices'])} "
                      f"utterances, utterance j of each painting scored against its other utterances "
                      f"({h['references_per_painting']:.1f} on average), mean over j = 0..{len(h['utterance_indices']) - 1}."]
    if "constant_caption" in result:
        lines += ["", f"Constant baseline caption: \"{result['constant_caption']}\""]
    if "emotion" in result:
        lines += render_emotion_markdown(result["emotion"])
    first = result["systems"][result["model"]]["paper_bleu"]["first_20"]
    lines += ["", f"Paper BLEU-4 of the first {len(first)} paintings:", "", "| painting | BLEU-4 |", "|---|---:|"]
    lines += [f"| {image} | {score:.3f} |" for image, score in first.items()]
    return "\n".join(lines) + "\n"


# ---- CLI ----------------------------------------------------------------------------------------

def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model (and the baselines) with the COCO caption metrics",
                       description="Caption every painting of a split and score it against all of its references: "
                                   "COCO BLEU-1..4, METEOR (needs Java), ROUGE-L, CIDEr-D, the paper's per-painting "
                                   "BLEU, diversity, grounding and coherence rates, each with a 95% bootstrap "
                                   "interval, next to a human row. Writes predictions.json, scores.json and "
                                   "scores.md with --out.")
    p.add_argument("model", nargs="?", default=None, metavar="RUN_OR_MODEL",
                   help="run folder or model folder (default: the shipped model)")
    add_scoring_arguments(p, "model's")
    settings.add_arguments(p.add_argument_group("decoding (every field of DecodingConfig)"), DecodingConfig)
    p.add_argument("--format", choices=["text", "json"], default="text", help="stdout: the markdown table or JSON")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write predictions.json, scores.json and scores.md into DIR")
    p.add_argument("--baselines", action="store_true", help="also score the nearest-neighbour and constant baselines")
    p.set_defaults(func=run_evaluate)


def add_scoring_arguments(p, whose: str) -> None:
    """The data, split and scoring options that `evaluate` and `compare` share."""
    p.add_argument("--data", required=True, help="ArtEmis CSV or Flickr8k captions.txt")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help=f"the {whose} test or val paintings, or every painting of the data (default: test)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves a ~10 s Java start per model)")
    p.add_argument("--resamples", type=settings.bounded(int, 1, 100_000),
                   default=bootstrap.DEFAULT_RESAMPLES, metavar="N",
                   help=f"bootstrap resamples of the paintings behind each 95%% interval "
                        f"(default: {bootstrap.DEFAULT_RESAMPLES})")
    p.add_argument("--cache", default="", help="feature cache folder (default: $ARTCAP_CACHE or ~/.cache/artcap)")
    p.add_argument("--skip-missing", action="store_true", help="go on without bad rows and unreadable images")


def run_evaluate(args) -> int:
    quiet = getattr(args, "quiet", False)
    result = evaluate(args.model, args.data, args.images, split=args.split, with_meteor=not args.no_meteor,
                      out_dir=args.out, baselines=args.baselines, feature_cache=args.cache,
                      skip_missing=args.skip_missing, progress=not quiet, backend=args.backend,
                      resamples=args.resamples, **settings.check_overrides(DecodingConfig, settings.overrides(args, DecodingConfig)))
    if args.format == "json":
        json.dump({k: v for k, v in result.items() if k != "table"}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(result["table"])
        if "constant_caption" in result:
            sys.stdout.write(f"\nconstant baseline: \"{result['constant_caption']}\"\n")
    if args.out is not None:
        log.info("wrote %s", ", ".join(str(args.out / f) for f in ("predictions.json", "scores.json", "scores.md")))
    return 0
