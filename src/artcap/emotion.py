"""Image -> emotion: the 9-way distribution of the emotions people feel before a painting (ArtEmis' image-to-emotion
classifier), trained on artcap's cached pooled image features.

    head, report = train_emotion_head(corpus, EmotionSettings())   # seconds on a CPU; selected on VAL, never test
    probs = head.predict(features)                                 # [n, C] float32 -> [n, 9], rows sum to 1
    save_emotion_head(model_dir, head, report)                     # emotion.safetensors + config.json "emotion"
    head = load_emotion_head(model_dir)                            # None when the model folder has none

As in ArtEmis, an MLP on image features is trained with KL(human emotion histogram || prediction). Two small
additions, both fitted on the VAL split: a temperature that calibrates the distribution (lowest val KL), and a prior
correction for the dominant-emotion decision (`EmotionHead.dominant`: argmax of p / prior**alpha, alpha with the best
val macro recall). A KL-trained head mostly predicts the majority emotion (contentment); dividing by the training
prior is the textbook fix for label shift and costs nothing in KL, since the distribution itself is not changed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .data import EMOTIONS, Annotation
from .errors import ArtcapError

NUM_EMOTIONS = len(EMOTIONS)
HEAD_FILE = "emotion.safetensors"
EPS = 1e-8  # probabilities are clipped to this before a log: a zero-probability guess would make KL infinite
TEMPERATURES = np.exp(np.linspace(math.log(0.5), math.log(3.0), 41))  # tried on val for calibration
ALPHAS = np.round(np.linspace(0.0, 1.5, 31), 3)  # prior-correction strengths tried on val


@dataclass(frozen=True)
class EmotionSettings:
    """How the emotion head is trained. The defaults were chosen on the VAL split of artemis-mini."""

    hidden_dim: int = 64  # 0: a linear head
    dropout: float = 0.5
    input_dropout: float = 0.5  # dropout on the standardised features
    members: int = 5  # an ensemble of this many MLPs (different initialisations), trained side by side; averaged
    lr: float = 1e-4
    weight_decay: float = 0.3  # AdamW's; the head sees ~2k paintings of 1280 features, so it overfits fast
    fit_temperature: bool = False  # fit a temperature on val (119 paintings in artemis-mini: too few, it overfits)
    epochs: int = 60  # at most; the epoch with the lowest val KL is kept
    patience: int = 10  # stop after this many epochs without a better val KL
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        rules = {"hidden_dim": (0, 8192), "dropout": (0.0, 0.95), "input_dropout": (0.0, 0.95), "members": (1, 64), "lr": (1e-7, 10.0), "weight_decay": (0.0, 10.0),
                 "epochs": (1, 100_000), "patience": (1, 100_000), "batch_size": (1, 65_536), "seed": (0, 2**63 - 1)}
        if not isinstance(self.fit_temperature, bool):
            raise ArtcapError(f"emotion setting fit_temperature = {self.fit_temperature!r}: must be true or false")
        for key, (low, high) in rules.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
                    or (isinstance(value, float) and not math.isfinite(value)):
                raise ArtcapError(f"emotion setting {key} = {value!r} is out of range: must be from {low} to {high}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "emotion settings") -> "EmotionSettings":
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ArtcapError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        kinds = {"int": int, "float": float, "bool": bool}
        checked = {}
        for key, value in values.items():
            kind = kinds[known[key]]
            if kind is bool:
                if not isinstance(value, bool):
                    raise ArtcapError(f"{source}: {key} must be true or false, got {value!r}")
                checked[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise ArtcapError(f"{source}: {key} must be a number ({kind.__name__}), got {value!r}")
            checked[key] = kind(value)
        return cls(**checked)


class EmotionHead(nn.Module):
    """Standardised features -> Linear -> ReLU -> Dropout -> Linear -> 9 logits; `predict` gives the calibrated
    distribution, `dominant` the prior-corrected decision. Everything it needs is in its state dict (buffers)."""

    def __init__(self, feature_dim: int, hidden_dim: int = 256, members: int = 1, dropout: float = 0.5,
                 input_dropout: float = 0.0):
        super().__init__()
        self.feature_dim, self.hidden_dim, self.members = feature_dim, hidden_dim, members
        self.nets = nn.ModuleList(self._member(feature_dim, hidden_dim, dropout, input_dropout) for _ in range(members))
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_scale", torch.ones(feature_dim))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("log_prior", torch.full((NUM_EMOTIONS,), -math.log(NUM_EMOTIONS)))
        self.register_buffer("prior_alpha", torch.zeros(()))

    @staticmethod
    def _member(feature_dim: int, hidden_dim: int, dropout: float, input_dropout: float) -> nn.Module:
        if hidden_dim == 0:  # a linear model (the logistic-regression probe, trained by KL)
            return nn.Sequential(nn.Dropout(input_dropout), nn.Linear(feature_dim, NUM_EMOTIONS))
        return nn.Sequential(nn.Dropout(input_dropout), nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(hidden_dim, NUM_EMOTIONS))

    def member_logits(self, features: torch.Tensor) -> torch.Tensor:
        """[members, n, 9]: each MLP's logits (what training optimises, one KL per member)."""
        x = (features - self.feature_mean) / self.feature_scale
        return torch.stack([net(x) for net in self.nets])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The ensemble's uncalibrated log-probabilities [n, 9]: log of the members' mean distribution."""
        log_probs = torch.log_softmax(self.member_logits(features), dim=-1)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.members)

    def _checked(self, features: Any) -> torch.Tensor:
        array = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features,
                           dtype=np.float32)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.feature_dim:
            raise ArtcapError(f"emotion head: features of shape {tuple(array.shape)}, expected [n, {self.feature_dim}] "
                              f"(pooled features of the encoder it was trained with)")
        if not np.isfinite(array).all():
            raise ArtcapError("emotion head: features hold NaN or infinity; re-extract them (damaged cache?)")
        return torch.from_numpy(array)

    @torch.inference_mode()
    def predict(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Features [n, C] -> the predicted emotion distribution [n, 9] (float64, each row sums to 1)."""
        self.eval()
        logits = self(self._checked(features)).double() / self.temperature.double()
        return torch.softmax(logits, dim=1).numpy()

    def dominant(self, probs: np.ndarray) -> np.ndarray:
        """The dominant emotion (an index into EMOTIONS) of each predicted distribution, corrected for the training
        prior: argmax p / prior**alpha (alpha chosen on val for macro recall)."""
        return prior_corrected_argmax(probs, self.log_prior.double().numpy(), float(self.prior_alpha))

    def emotions(self, features: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
        """Per image: {"dominant": name, "distribution": {name: p}} — what Captioner.emotions returns."""
        probs = self.predict(features)
        return [{"dominant": EMOTIONS[k], "distribution": {e: float(p) for e, p in zip(EMOTIONS, row)}}
                for k, row in zip(self.dominant(probs), probs)]


def prior_corrected_argmax(probs: np.ndarray, log_prior: np.ndarray, alpha: float) -> np.ndarray:
    return np.argmax(np.log(np.clip(probs, EPS, None)) - alpha * log_prior, axis=1)


# --- data ------------------------------------------------------------------------------------------------------------

def emotion_histograms(annotations: Sequence[Annotation], image_ids: Sequence[str]) -> np.ndarray:
    """Vote counts [n, 9] per painting, from every annotation of it (not only those a preset keeps for training)."""
    index = {e: k for k, e in enumerate(EMOTIONS)}
    row = {i: n for n, i in enumerate(image_ids)}
    counts = np.zeros((len(image_ids), NUM_EMOTIONS), np.float64)
    for a in annotations:
        if a.image_id in row and a.emotion in index:
            counts[row[a.image_id], index[a.emotion]] += 1
    empty = [i for i, c in zip(image_ids, counts) if c.sum() == 0]
    if empty:
        raise ArtcapError(f"painting {empty[0]}: no annotation with an emotion ({len(empty)} such painting(s)); "
                          f"the emotion head needs ArtEmis data (an emotion column)")
    return counts


def normalise(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum(axis=1, keepdims=True)


@dataclass
class EmotionSplit:
    """The features and emotion histograms (normalised) of one split's paintings."""

    ids: list[str]
    features: np.ndarray  # [n, C] float32
    histograms: np.ndarray  # [n, 9], rows sum to 1

    @classmethod
    def of(cls, corpus, split: str) -> "EmotionSplit":
        ids = corpus.data.split_ids(split)
        if not ids:
            raise ArtcapError(f"the {split} split has no paintings; the emotion head needs train and val paintings")
        rows = np.asarray([corpus.image_row[i] for i in ids], dtype=np.int64)
        features = np.asarray(corpus.features[rows], dtype=np.float32)
        if features.ndim != 2:
            raise ArtcapError(f"the emotion head reads pooled features [n, C]; this corpus has features of shape "
                              f"{features.shape[1:]} (grid features): load the corpus with FeatureSpec('pooled')")
        return cls(ids, features, normalise(emotion_histograms(corpus.annotations, ids)))


# --- scoring ---------------------------------------------------------------------------------------------------------

def kl_divergence(histograms: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """KL(human || predicted) per painting, in nats; zero-vote emotions contribute nothing."""
    h = np.asarray(histograms, np.float64)
    p = np.clip(np.asarray(probs, np.float64), EPS, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(h > 0, h * (np.log(np.where(h > 0, h, 1.0)) - np.log(p)), 0.0)
    return terms.sum(axis=1)


def majority_mask(histograms: np.ndarray) -> np.ndarray:
    """Paintings whose dominant emotion has MORE than half of the votes (ArtEmis' accuracy subset)."""
    h = normalise(np.asarray(histograms, np.float64))
    return h.max(axis=1) > 0.5


def score_emotion_classifier(probs: np.ndarray, histograms: np.ndarray, prior: np.ndarray | None = None,
                             decisions: np.ndarray | None = None) -> dict[str, float | int | None]:
    """ArtEmis' scores, and more honest ones next to them.

    accuracy: top-1 on the paintings whose dominant emotion has > half the votes; macro_recall: the mean over
    emotions of the recall on those paintings (emotions no such painting has are left out); kl: mean KL(human ||
    predicted). With `prior` (the mean TRAINING histogram): majority_accuracy (always the prior's most frequent
    emotion), majority_macro_recall, prior_kl (always predicting the prior). `decisions`: the predicted emotion
    indices (default argmax of probs)."""
    probs, histograms = np.asarray(probs, np.float64), normalise(np.asarray(histograms, np.float64))
    if probs.shape != histograms.shape or probs.ndim != 2 or probs.shape[1] != NUM_EMOTIONS:
        raise ArtcapError(f"emotion scores: predictions {probs.shape} and histograms {histograms.shape} must both be "
                          f"[n, {NUM_EMOTIONS}]")
    decisions = np.argmax(probs, axis=1) if decisions is None else np.asarray(decisions)
    mask = majority_mask(histograms)
    truth = np.argmax(histograms, axis=1)
    scores: dict[str, float | int | None] = {
        "paintings": len(probs), "majority_paintings": int(mask.sum()),
        "accuracy": _accuracy(decisions[mask], truth[mask]), "macro_recall": macro_recall(decisions[mask], truth[mask]),
        "kl": float(kl_divergence(histograms, probs).mean()),
    }
    if prior is not None:
        prior = normalise(np.asarray(prior, np.float64)[None])[0]
        constant = np.full(int(mask.sum()), int(np.argmax(prior)))
        scores.update(majority_accuracy=_accuracy(constant, truth[mask]),
                      majority_macro_recall=macro_recall(constant, truth[mask]),
                      prior_kl=float(kl_divergence(histograms, np.broadcast_to(prior, probs.shape)).mean()))
    return scores


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    return float(np.mean(predicted == truth)) if len(truth) else None


def macro_recall(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    """Mean recall over the classes present in `truth` (a class no painting has has no recall)."""
    present = np.unique(truth)
    if not len(present):
        return None
    return float(np.mean([np.mean(predicted[truth == k] == k) for k in present]))


# --- training --------------------------------------------------------------------------------------------------------

def mean_kl(head: EmotionHead, split: EmotionSplit) -> float:
    return float(kl_divergence(split.histograms, head.predict(split.features)).mean())


def train_emotion_head(corpus, settings: EmotionSettings | None = None) -> tuple[EmotionHead, dict[str, Any]]:
    """Train the head on the TRAIN paintings of `corpus` (an artcap.corpus.Corpus with pooled features); the epoch,
    the temperature and the prior correction are chosen on VAL. Returns the head and a report (val scores, the
    chosen epoch/temperature/alpha, training curve); the test split is never read."""
    settings = settings or EmotionSettings()
    train_split, val_split = EmotionSplit.of(corpus, "train"), EmotionSplit.of(corpus, "val")
    return fit_emotion_head(train_split, val_split, settings)


def fit_emotion_head(train_split: EmotionSplit, val_split: EmotionSplit,
                     settings: EmotionSettings) -> tuple[EmotionHead, dict[str, Any]]:
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    head = EmotionHead(train_split.features.shape[1], settings.hidden_dim, settings.members, settings.dropout,
                       settings.input_dropout)
    x = torch.from_numpy(train_split.features)
    target = torch.from_numpy(train_split.histograms).float()
    head.feature_mean.copy_(x.mean(0))
    head.feature_scale.copy_(x.std(0).clamp_min(1e-3))  # constant features (dead channels) stay finite
    prior = train_split.histograms.mean(axis=0)
    head.log_prior.copy_(torch.from_numpy(np.log(np.clip(prior, EPS, None))))
    optimiser = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    best_kl, best_epoch, best_state, history = math.inf, 0, None, []
    for epoch in range(1, settings.epochs + 1):
        head.train()
        total = 0.0
        for idx in np.array_split(generator.permutation(len(x)), max(1, math.ceil(len(x) / settings.batch_size))):
            idx_t = torch.from_numpy(idx)
            log_probs = torch.log_softmax(head.member_logits(x[idx_t]), dim=-1)  # [members, b, 9]
            # the members' mean KL: each member is trained on its own, the ensemble is only averaged
            loss = nn.functional.kl_div(log_probs, target[idx_t].expand_as(log_probs), reduction="sum") / len(idx)
            loss = loss / head.members
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        val_kl = mean_kl(head, val_split)
        history.append({"epoch": epoch, "train_kl": total / len(x), "val_kl": val_kl})
        if val_kl < best_kl:
            best_kl, best_epoch = val_kl, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= settings.patience:
            break
    head.load_state_dict(best_state)
    head.eval()
    calibrate(head, val_split, settings.fit_temperature)
    probs = head.predict(val_split.features)
    report = {
        "settings": settings.to_dict(), "best_epoch": best_epoch, "epochs_run": len(history),
        "temperature": float(head.temperature), "prior_alpha": float(head.prior_alpha),
        "train_paintings": len(train_split.ids), "val_paintings": len(val_split.ids),
        "val": score_emotion_classifier(probs, val_split.histograms, prior, head.dominant(probs)),
        "history": history,
    }
    return head, report


def calibrate(head: EmotionHead, val_split: EmotionSplit, fit_temperature: bool = False) -> None:
    """Optionally fit the temperature (lowest val KL), then the prior correction alpha (best val macro recall on the
    > half majority paintings; ties go to the smallest alpha, i.e. the least correction)."""
    with torch.inference_mode():
        logits = head(torch.from_numpy(val_split.features)).double().numpy()
    temperature = 1.0
    if fit_temperature:
        kls = [kl_divergence(val_split.histograms, _softmax(logits / t)).mean() for t in TEMPERATURES]
        temperature = float(TEMPERATURES[int(np.argmin(kls))])
    head.temperature.fill_(temperature)
    probs = _softmax(logits / temperature)
    mask = majority_mask(val_split.histograms)
    truth = np.argmax(val_split.histograms, axis=1)[mask]
    log_prior = head.log_prior.double().numpy()
    recalls = [macro_recall(prior_corrected_argmax(probs[mask], log_prior, a), truth) or 0.0 for a in ALPHAS]
    head.prior_alpha.fill_(float(ALPHAS[int(np.argmax(recalls))]))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# --- baselines and the full benchmark -----------------------------------------------------------------------------

def logistic_probe(train_split: EmotionSplit, val_split: EmotionSplit,
                   cs: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)):
    """A linear baseline: multinomial logistic regression on the standardised features, each painting weighted by its
    votes (so its loss is the cross-entropy to the histogram, the KL up to a constant); C chosen by val KL.
    Returns (predict_proba function, chosen C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(train_split.ids)
    x = np.repeat(train_split.features, NUM_EMOTIONS, axis=0)
    y = np.tile(np.arange(NUM_EMOTIONS), n)
    weights = train_split.histograms.reshape(-1)
    keep = weights > 0
    best = None
    for c in cs:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(x[keep], y[keep], logisticregression__sample_weight=weights[keep])
        probs = _full_proba(model, val_split.features)
        kl = float(kl_divergence(val_split.histograms, probs).mean())
        if best is None or kl < best[0]:
            best = (kl, c, model)
    _, c, model = best
    return (lambda features: _full_proba(model, features)), c


def _full_proba(model, features: np.ndarray) -> np.ndarray:
    """predict_proba over all 9 emotions, even one the training data never chose."""
    probs = np.zeros((len(features), NUM_EMOTIONS))
    probs[:, model.classes_] = model.predict_proba(features)
    return probs


def benchmark_emotion_head(corpus, settings: EmotionSettings | None = None) -> dict[str, Any]:
    """Train the head (selection on val), then score it, the training prior, the majority guess and the logistic probe
    on val and test: the table in docs/emotions.md ("Results: the emotion classifier")."""
    head, report = train_emotion_head(corpus, settings)
    train_split = EmotionSplit.of(corpus, "train")
    val_split = EmotionSplit.of(corpus, "val")
    probe, probe_c = logistic_probe(train_split, val_split)
    prior = train_split.histograms.mean(axis=0)
    result: dict[str, Any] = {"report": {k: v for k, v in report.items() if k != "history"}, "probe_C": probe_c}
    for name in ("val", "test"):
        split = val_split if name == "val" else EmotionSplit.of(corpus, name)
        probs = head.predict(split.features)
        probe_probs = probe(split.features)
        result[name] = {
            "head": score_emotion_classifier(probs, split.histograms, prior, head.dominant(probs)),
            "head_argmax": score_emotion_classifier(probs, split.histograms),
            "probe": score_emotion_classifier(probe_probs, split.histograms),
            "probe_prior_corrected": score_emotion_classifier(
                probe_probs, split.histograms,
                decisions=prior_corrected_argmax(probe_probs, np.log(np.clip(prior, EPS, None)),
                                                 float(head.prior_alpha))),
        }
    return result


# --- the model folder ------------------------------------------------------------------------------------------------

def save_emotion_head(model_dir: str | Path, head: EmotionHead, report: dict[str, Any] | None = None) -> None:
    """Write `emotion.safetensors` and the "emotion" section of the folder's config.json (sizes, the training report
    without its curve). Call it after the decoder's last export: that writes config.json anew."""
    from .model_folder import EmotionSection, write_part

    section = EmotionSection(head.feature_dim, head.hidden_dim, head.members)
    training = {k: v for k, v in (report or {}).items() if k != "history"}
    write_part(model_dir, head, section.file, lambda config: config.with_emotion(section, training))


def load_emotion_head(model_dir: str | Path, config=None) -> EmotionHead | None:
    """The model folder's emotion head, or None when its config.json has no "emotion" section."""
    from .model_folder import ModelConfig, load_part

    config = config or ModelConfig.read(model_dir)
    return load_part(model_dir, config.emotion, lambda s: EmotionHead(s.feature_dim, s.hidden_dim, s.members),
                     "emotion")
