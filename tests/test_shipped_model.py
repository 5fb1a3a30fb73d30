"""The model shipped inside the package: loads offline and describes real paintings in real words."""

import json
import re


from artcap.captioner import DEFAULT_MODEL_DIR, shipped_models
from artcap.cli import main


def test_card_and_files_are_shipped():
    for name in ("config.json", "vocab.json", "model.safetensors", "splits.json", "MODEL_CARD.md",
                 "emotion.safetensors", "text_emotion.json", "matcher.safetensors"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name
    # ArtEmis/WikiArt terms: a shipped model holds trained weights, never the training captions or image features
    for folder in shipped_models().values():
        assert not list(folder.glob("neighbours.*")), folder
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 25_000_000
    assert sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()) < 40_000_000


def test_captions_held_out_paintings_with_real_words(captioner, shared_data):
    splits = json.loads((DEFAULT_MODEL_DIR / "splits.json").read_text())
    wikiart = shared_data / "artemis-mini" / "wikiart"
    test_ids = splits["test"][::30][:8]  # held-out paintings of varied styles
    captions = captioner.caption([wikiart / f"{i}.jpg" for i in test_ids])
    assert len(captions) == len(test_ids)
    vocab = set(captioner.vocab.words[4:])
    for caption in captions:
        words = caption.split()
        assert 3 <= len(words) <= captioner.decoding.max_len
        assert set(words) <= vocab and re.fullmatch(r"[a-z0-9' ]+", caption)
    assert len(set(captions)) >= 3, captions  # not one generic sentence for every painting


def test_cli_captions_the_example_image(capsys):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "landscape.jpg"
    assert main(["caption", str(example), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "artcap-default"
    assert len(out["captions"][0]["caption"].split()) >= 3


def _val_paintings(shared_data, count: int) -> list:
    splits = json.loads((DEFAULT_MODEL_DIR / "splits.json").read_text())
    wikiart = shared_data / "artemis-mini" / "wikiart"
    return [wikiart / f"{i}.jpg" for i in splits["val"][:count]]


def test_the_default_is_steered_by_the_emotion_asked_for(captioner, shared_data):
    """The default model's steerability, on 24 val paintings: captions asked for an emotion are judged (by the model's own
    text classifier) to express it far more often than chance (1/9)."""
    from artcap.text_emotion import TextEmotionClassifier, steerability

    assert captioner.is_grounded
    features = captioner.encode(_val_paintings(shared_data, 24))
    asked = ("sadness", "fear", "contentment", "amusement")
    captions = {e: dict(enumerate(captioner.caption(features, emotion=e))) for e in asked}
    shares = steerability(captions, TextEmotionClassifier.load(DEFAULT_MODEL_DIR))
    assert shares["overall"] >= 0.4 and min(shares[e] for e in asked) > 1 / 9, shares

