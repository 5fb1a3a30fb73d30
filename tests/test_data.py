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


# The counts documented in docs/data.md.
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


# ---- odd data: tiny sets, duplicates, ragged rows -------------------------------------------


def _paintings(tmp_path, n):
    """A real images folder with n small paintings, and one ArtEmis row per painting."""
    from PIL import Image

    folder = tmp_path / "wikiart" / "Cubism"
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(folder / f"p{i}.jpg")
        rows.append(["Cubism", f"p{i}", "awe", f"the red square number {i} makes me calm", 1])
    return tmp_path / "wikiart", rows


def test_one_painting_is_refused_with_the_split_sizes(tmp_path):
    images, rows = _paintings(tmp_path, 1)
    annotations = read_annotations(_write_csv(tmp_path / "one.csv", rows), images)
    with pytest.raises(ArtcapError) as caught:
        prepare(annotations, "paper")
    assert str(caught.value) == (
        "1 painting split 85/5/10 into 0/0/1 (train/val/test): no training painting; "
        "need at least 2 paintings with captions"
    )


def test_ten_paintings_leave_val_empty_training_can_refuse_early(tmp_path, caplog):
    images, rows = _paintings(tmp_path, 10)
    annotations = read_annotations(_write_csv(tmp_path / "ten.csv", rows), images)
    with caplog.at_level("WARNING", logger="artcap"):
        data = prepare(annotations, "paper")  # evaluation needs no val split: a warning only
    assert [r.getMessage() for r in caplog.records] == [
        "10 paintings split 85/5/10 into 8/0/2 (train/val/test): no validation painting; "
        "need at least 20 paintings with captions"
    ]
    assert (data.split_sizes().train, data.split_sizes().val, data.split_sizes().test) == (8, 0, 2)
    expected = "10 paintings split 85/5/10 into 8/0/2 (train/val/test): no validation painting"
    with pytest.raises(ArtcapError, match=re.escape(expected)):
        data.require_splits("train", "val")
    with pytest.raises(ArtcapError, match=re.escape(expected)):
        prepare(annotations, "paper", require=("train", "val"))
    data.require_splits("train", "test")  # both have paintings


def test_twenty_paintings_fill_every_split(tmp_path):
    images, rows = _paintings(tmp_path, 20)
    data = prepare(read_annotations(_write_csv(tmp_path / "twenty.csv", rows), images), "paper",
                   require=("train", "val", "test"))
    assert str(data.split_sizes()) == "20 paintings split 85/5/10 into 17/1/2 (train/val/test)"


def test_a_preset_that_leaves_no_training_caption_says_so(tmp_path):
    images, rows = _paintings(tmp_path, 4)
    for row in rows:
        row[3] = "so calm"  # under the artemis preset's 5 tokens
    annotations = read_annotations(_write_csv(tmp_path / "short.csv", rows), images)
    with pytest.raises(ArtcapError, match=r"4 paintings split 85/5/10 into 3/0/1 .*'artemis' preset left no caption "
                                          r"of the 3 training painting\(s\) \(it keeps utterances of 5 tokens"):
        prepare(annotations, "artemis")


def test_exact_duplicate_rows_are_dropped_with_one_warning(tmp_path, caplog):
    images, rows = _paintings(tmp_path, 3)
    same_painting_other_words = ["Cubism", "p0", "awe", "another caption of the same painting", 1]
    path = _write_csv(tmp_path / "dups.csv", [rows[0], rows[1], rows[0], same_painting_other_words, rows[2], rows[1]])
    with caplog.at_level("WARNING", logger="artcap"):
        annotations = read_annotations(path, images)
    assert [a.row for a in annotations] == [2, 3, 5, 6]  # rows 4 and 7 repeat rows 2 and 3
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: dropped 2 exact duplicate row(s), the first is row 4 (a copy of row 2)"
    ]


def test_rows_with_too_many_or_too_few_values_are_named(tmp_path):
    images, rows = _paintings(tmp_path, 2)
    path = tmp_path / "ragged.csv"
    path.write_text("art_style,painting,emotion,utterance,repetition\n"
                    "Cubism,p0,awe,so calm, and so red,1\n"  # an unquoted comma: used to cut the utterance
                    "Cubism,p1,awe\n")
    with pytest.raises(ArtcapError) as caught:
        read_annotations(path, images)
    assert "row 2: 6 values for 5 columns" in str(caught.value) and "quote values that contain commas" in str(caught.value)
    assert "2 row(s) with problems" in str(caught.value)


def test_rows_are_named_by_their_first_line_across_multiline_captions(tmp_path):
    images, rows = _paintings(tmp_path, 2)
    path = tmp_path / "multiline.csv"
    path.write_text('art_style,painting,emotion,utterance,repetition\n'
                    'Cubism,p0,awe,"three lines\nof one\ncaption",1\n'
                    '\n'
                    'Cubism,p1,joy,a happy square,1\n')
    with pytest.raises(ArtcapError, match=r"row 6: unknown emotion 'joy'"):
        read_annotations(path, images)


def test_semicolon_separated_file_gets_a_hint(tmp_path):
    images, _ = _paintings(tmp_path, 1)
    path = tmp_path / "excel.csv"
    path.write_text("art_style;painting;emotion;utterance;repetition\nCubism;p0;awe;calm;1\n")
    with pytest.raises(ArtcapError, match="it seems to use ';' between columns: save it comma-separated"):
        read_annotations(path, images)
