"""Stage 1: reading the corpus, presets, splits, and the one-line errors for bad input."""

import csv
import re

import pytest

from artcap.cli import main
from artcap.data import caption_tokens, make_splits, prepare, read_annotations, references
from artcap.errors import ArtcapError
from artcap.text import Vocabulary, first_sentence, tokenize


def test_tokenize_and_first_sentence():
    assert tokenize("The WOMAN's dress... looks SAD!") == ["the", "woman's", "dress", "looks", "sad"]
    assert first_sentence("Dark colors. I feel sad! Why?") == "Dark colors"
    assert first_sentence("... the sky is calm. very calm") == "the sky is calm"
    assert first_sentence("no end mark here") == "no end mark here"


def test_vocabulary_round_trip(tmp_path):
    vocab = Vocabulary.build([["a", "b", "a"], ["c"]], min_count=1)
    assert vocab.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and vocab.words[4] == "a"
    ids = vocab.encode(["a", "zebra"])
    assert ids == [vocab.bos_id, vocab.index["a"], vocab.unk_id, vocab.eos_id]
    assert vocab.decode(ids + [vocab.index["b"]]) == "a <unk>"
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").words == vocab.words


# The counts documented in the README ("Data formats and presets").
DOCUMENTED = {
    "paper": {"images": 2393, "captions": 11965, "vocabulary": 8477, "max_len": 51,
              "train_images": 2034, "val_images": 119, "test_images": 240},
    "artemis": {"images": 2393, "captions": 12176, "vocabulary": 2208, "max_len": 30,
                "train_images": 2034, "val_images": 119, "test_images": 240},
}


@pytest.mark.parametrize("preset", ["paper", "artemis"])
def test_presets_give_documented_counts(shared_data, preset):
    root = shared_data / "artemis-mini"
    annotations = read_annotations(root / "artemis_mini.csv", root / "wikiart")
    assert len(annotations) == 12889
    data = prepare(annotations, preset)
    assert data.counts() == DOCUMENTED[preset]
    lengths = [len(t) for caps in data.captions.values() for t in caps]
    if preset == "paper":
        assert max(len(c) for c in data.captions.values()) == 5
    else:
        assert min(lengths) >= 5 and max(lengths) <= data.max_len


def test_flickr8k_format(shared_data):
    root = shared_data / "flickr8k-mini"
    data = prepare(read_annotations(root / "captions.txt", root / "Images"), "paper")
    assert data.counts()["images"] == 887 and data.counts()["captions"] == 4435


def test_splits_are_by_painting_and_reproducible(shared_data):
    root = shared_data / "artemis-mini"
    annotations = read_annotations(root / "artemis_mini.csv", root / "wikiart")
    ids = {a.image_id for a in annotations}
    splits = make_splits(ids, seed=2021)
    assert splits == make_splits(ids, seed=2021) != make_splits(ids, seed=1)
    assert set(splits["train"]).isdisjoint(splits["test"]) and set(splits["val"]).isdisjoint(splits["test"])
    assert set().union(*splits.values()) == ids
    refs = references(annotations, "paper", splits["test"][:3])
    first = splits["test"][0]
    assert len(refs[first]) == sum(a.image_id == first for a in annotations)  # every utterance counts
    assert caption_tokens("Sad. Very sad.", "paper") == ["sad"]


def _write_csv(path, rows, header=("art_style", "painting", "emotion", "utterance", "repetition")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _images(tmp_path):
    from PIL import Image

    (tmp_path / "wikiart" / "Cubism").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (32, 32), "red").save(tmp_path / "wikiart" / "Cubism" / f"{name}.jpg")
    return tmp_path / "wikiart"


BAD_CSVS = {
    "missing column": ([["Cubism", "a", "awe", "nice"]], ("art_style", "painting", "emotion", "utterance"),
                       "missing column(s) repetition"),
    "unknown emotion": ([["Cubism", "a", "awe", "a fine day", 1], ["Cubism", "b", "happy", "so nice", 1]], None,
                        "row 3: unknown emotion 'happy'"),
    "empty utterance": ([["Cubism", "a", "awe", "   ", 1], ["Cubism", "b", "awe", "ok then", 1]], None,
                        "row 2: empty utterance"),
    "missing image": ([["Cubism", "a", "awe", "a fine day", 1], ["Cubism", "zzz", "awe", "so nice", 1]], None,
                      "row 3: image"),
}


@pytest.mark.parametrize("case", BAD_CSVS)
def test_bad_csv_gets_one_line_naming_the_row(tmp_path, case, capsys):
    rows, header, expected = BAD_CSVS[case]
    images = _images(tmp_path)
    path = _write_csv(tmp_path / "bad.csv", rows, *(header and [header] or []))
    with pytest.raises(ArtcapError, match=re.escape(expected)):
        read_annotations(path, images)
    # Through the CLI: one line on stderr, exit code 2, no traceback.
    code = main(["features", "--data", str(path), "--images", str(images)])
    err = capsys.readouterr().err
    assert code == 2 and expected.split(":")[0] in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    if case != "missing column":
        assert "1 row(s) with problems" in err and "--skip-missing" in err
        kept = read_annotations(path, images, skip_missing=True)
        assert len(kept) == 1


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ArtcapError, match="nope.csv: no such file"):
        read_annotations(tmp_path / "nope.csv", tmp_path)
