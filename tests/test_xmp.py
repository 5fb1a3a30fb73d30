"""XMP sidecars and embedded XMP, read back by exiftool (the tool archives use), on real images."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artcap import __version__
from artcap.errors import ArtcapError
from artcap.example import draw_example_painting
from artcap.xmp import (ARTCAP_NS, ExifTool, MetadataWriter, embed_metadata, mirror_root, sidecar_path,
                        write_sidecar)

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed "
                                    "(apt-get install libimage-exiftool-perl; CI installs it)")
CAPTION_TAGS = ["-XMP-iptcCore:AltTextAccessibility", "-XMP-iptcCore:AltTextAccessibility-en",
                "-XMP-dc:Description", "-XMP-dc:Description-en", "-XMP-xmp:CreatorTool", "-XMP-artcap:all"]


def read_back(*paths: Path, tags=CAPTION_TAGS) -> dict[str, dict]:
    """exiftool's own reading of the files: {file name: {GROUP:TAG: value}}."""
    result = subprocess.run([EXIFTOOL, "-j", "-G1", "-struct", *tags, *map(str, paths)],
                            capture_output=True, text=True, check=True)
    return {Path(r["SourceFile"]).name: r for r in json.loads(result.stdout)}


def assert_caption_fields(record: dict, caption: str, model_id: str, decoding: dict, emotion=None, *,
                          description: str | None = None, creator_tool: str | None = None) -> None:
    """artcap's fields hold the caption; `description` / `creator_tool`: a person's, kept instead."""
    assert record["XMP-iptcCore:AltTextAccessibility"] == caption
    assert record["XMP-iptcCore:AltTextAccessibility-en"] == caption
    assert record["XMP-dc:Description"] == (description or caption)
    assert record.get("XMP-dc:Description-en") == (None if description else caption)
    assert record["XMP-xmp:CreatorTool"] == (creator_tool or f"artcap {__version__}")
    assert record["XMP-artcap:Caption"] == caption
    assert record["XMP-artcap:Model"] == model_id
    assert json.loads(record["XMP-artcap:Decoding"]) == decoding
    assert record.get("XMP-artcap:Emotion") == emotion


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def paintings(tmp_path) -> dict[str, Path]:
    """Real images in the three containers archives hold: the same stem as JPEG, PNG and TIFF (so
    their sidecars must not collide), and a second, different JPEG."""
    folder = tmp_path / "collection"
    folder.mkdir()
    painting = draw_example_painting(256)
    paths = {"jpg": folder / "landscape.jpg", "png": folder / "landscape.png", "tif": folder / "landscape.tif",
             "crop": folder / "detail.jpg"}
    painting.save(paths["jpg"], quality=90)
    painting.save(paths["png"])
    painting.save(paths["tif"])
    painting.crop((0, 0, 128, 128)).resize((256, 256)).save(paths["crop"], quality=90)
    return paths


def test_sidecar_is_named_after_the_whole_file_name(tmp_path):
    assert sidecar_path(Path("c/a.jpg")) == Path("c/a.jpg.xmp")
    assert sidecar_path(Path("c/a.jpg")) != sidecar_path(Path("c/a.tif"))
    collection = tmp_path / "collection"
    assert sidecar_path(collection / "sub" / "a.jpg", xmp_dir=tmp_path / "meta", root=collection) == \
        tmp_path / "meta" / "sub" / "a.jpg.xmp"
    # an image outside the root keeps its absolute path under the mirror, never escapes it
    outside = sidecar_path(tmp_path / "elsewhere" / "b.png", xmp_dir=tmp_path / "meta", root=collection)
    assert outside.is_relative_to(tmp_path / "meta") and outside.name == "b.png.xmp"


@pytest.mark.slow
@needs_exiftool
def test_sidecars_hold_the_real_captions(captioner, paintings):
    images = list(paintings.values())
    decoding = captioner.decoding.to_dict()
    captions = captioner.caption(images)
    before = {p: digest(p) for p in images}
    for image, caption in zip(images, captions):
        assert write_sidecar(image, caption, captioner.model_id, decoding) is None
    sidecars = [sidecar_path(p) for p in images]
    assert len(set(sidecars)) == len(images)  # landscape.jpg / .png / .tif: three sidecars
    records = read_back(*sidecars)
    for image, sidecar, caption in zip(images, sidecars, captions):
        assert_caption_fields(records[sidecar.name], caption, captioner.model_id, decoding)
        assert digest(image) == before[image]  # the original is never touched
    folder = images[0].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in images] + [s.name for s in sidecars])


@needs_exiftool
def test_an_existing_sidecar_keeps_its_other_fields(paintings):
    image = paintings["jpg"]
    sidecar = sidecar_path(image)
    # a curator's sidecar, written by exiftool as archives do
    subprocess.run([EXIFTOOL, "-q", "-o", str(sidecar), "-XMP-xmp:Rating=4", "-XMP-dc:Subject=landscape",
                    "-XMP-dc:Subject=sunset", "-XMP-dc:Title=Evening lake", "-XMP-dc:Description-fr=un lac le soir",
                    "-XMP-dc:Description=curator's old text", "-XMP-photoshop:Headline=Study", str(image)], check=True)
    kept = ["-XMP-xmp:Rating", "-XMP-dc:Subject", "-XMP-dc:Title", "-XMP-dc:Description-fr", "-XMP-photoshop:Headline",
            "-XMP-tiff:ImageWidth"]
    original = read_back(sidecar, tags=kept)[sidecar.name]
    assert original["XMP-xmp:Rating"] == 4 and original["XMP-dc:Subject"] == ["landscape", "sunset"]

    assert write_sidecar(image, "a lake at sunset", "artcap-default", {"beam": 5}, emotion="contentment") is None
    record = read_back(sidecar, tags=[*CAPTION_TAGS, *kept])[sidecar.name]
    # the curator's own description stays; the caption goes into the alt text beside it
    assert_caption_fields(record, "a lake at sunset", "artcap-default", {"beam": 5}, emotion="contentment",
                          description="curator's old text", creator_tool=original.get("XMP-xmp:CreatorTool"))
    assert {k: record[k] for k in original if k != "SourceFile"} == {k: v for k, v in original.items() if k != "SourceFile"}

    # re-captioning without an emotion removes the stale one and still keeps the curator's fields
    assert write_sidecar(image, "a lake", "other-model", {"beam": 1}) is None
    record = read_back(sidecar, tags=[*CAPTION_TAGS, *kept])[sidecar.name]
    assert_caption_fields(record, "a lake", "other-model", {"beam": 1}, emotion=None,
                          description="curator's old text", creator_tool=original.get("XMP-xmp:CreatorTool"))
    assert record["XMP-dc:Description-fr"] == "un lac le soir" and record["XMP-xmp:Rating"] == 4

    # asked for, the caption replaces the curator's description too (other languages still kept)
    assert write_sidecar(image, "a lake", "other-model", {"beam": 1}, overwrite_description=True) is None
    record = read_back(sidecar, tags=[*CAPTION_TAGS, *kept])[sidecar.name]
    assert_caption_fields(record, "a lake", "other-model", {"beam": 1}, creator_tool=original.get("XMP-xmp:CreatorTool"))
    assert record["XMP-dc:Description-fr"] == "un lac le soir"


@needs_exiftool
def test_an_adobe_style_sidecar_with_attributes_and_unknown_namespaces(paintings):
    """Lightroom writes simple properties as attributes and uses namespaces artcap does not know."""
    image = paintings["tif"]
    sidecar = sidecar_path(image)
    sidecar.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:museum="http://example.org/museum/1.0/" '
        'xmp:Rating="2" xmp:CreatorTool="Adobe Lightroom" museum:Accession="1921.7">'
        '<lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Lake</rdf:li></rdf:Bag></lr:hierarchicalSubject>'
        '</rdf:Description></rdf:RDF></x:xmpmeta>', encoding="utf-8")
    caption = 'a "lake" <at> dusk & a tree — é'
    assert write_sidecar(image, caption, "artcap-default", {"beam": 5}) is None
    record = read_back(sidecar, tags=[*CAPTION_TAGS, "-XMP-xmp:Rating", "-XMP-lr:HierarchicalSubject",
                                      "-XMP-museum:all"])[sidecar.name]
    assert_caption_fields(record, caption, "artcap-default", {"beam": 5}, creator_tool="Adobe Lightroom")
    assert record["XMP-xmp:Rating"] == 2
    assert record["XMP-lr:HierarchicalSubject"] == ["Places|Lake"]
    assert record["XMP-museum:Accession"] == 1921.7
    text = sidecar.read_text(encoding="utf-8")
    assert 'xmlns:museum="http://example.org/museum/1.0/"' in text  # its prefix kept, not ns0
    assert ARTCAP_NS in text  # and Lightroom stays the creator tool: artcap names itself only where none is


def test_an_unreadable_sidecar_is_left_alone(paintings):
    image = paintings["png"]
    sidecar = sidecar_path(image)
    sidecar.write_bytes(b"<x:xmpmeta not closed")
    error = write_sidecar(image, "a caption", "m", {"beam": 1})
    assert error is not None and "\n" not in error and str(sidecar) in error
    assert sidecar.read_bytes() == b"<x:xmpmeta not closed"
    sidecar.write_text("<html><body>not xmp</body></html>")
    error = write_sidecar(image, "a caption", "m", {"beam": 1})
    assert error is not None and "rdf:RDF" in error and sidecar.read_text() == "<html><body>not xmp</body></html>"


@needs_exiftool
def test_xmp_dir_writes_a_mirror_tree_and_nothing_beside_the_images(tmp_path, paintings):
    collection = paintings["jpg"].parent
    nested = collection / "room 2" / "wall.jpg"
    nested.parent.mkdir()
    shutil.copy(paintings["crop"], nested)
    listing = sorted(p.relative_to(collection) for p in collection.rglob("*"))
    mirror = tmp_path / "metadata"
    for image, caption in [(paintings["jpg"], "first"), (nested, "second")]:
        target = sidecar_path(image, xmp_dir=mirror, root=collection)
        assert write_sidecar(image, caption, "m", {"beam": 2}, sidecar=target) is None
    assert sorted(p.relative_to(collection) for p in collection.rglob("*")) == listing
    records = read_back(mirror / "landscape.jpg.xmp", mirror / "room 2" / "wall.jpg.xmp")
    assert records["landscape.jpg.xmp"]["XMP-iptcCore:AltTextAccessibility"] == "first"
    assert records["wall.jpg.xmp"]["XMP-iptcCore:AltTextAccessibility"] == "second"


def test_an_unwritable_sidecar_location_is_one_line_naming_it(tmp_path, paintings):
    blocker = tmp_path / "meta"
    blocker.write_text("a file where the mirror folder should be")
    target = sidecar_path(paintings["jpg"], xmp_dir=blocker, root=paintings["jpg"].parent)
    error = write_sidecar(paintings["jpg"], "a caption", "m", {"beam": 1}, sidecar=target)
    assert error is not None and "\n" not in error and str(target) in error and "--xmp-dir" in error


@needs_exiftool
@pytest.mark.parametrize("backup", [True, False])
def test_embed_writes_jpeg_png_tiff_and_reads_back(paintings, backup):
    images = [paintings["jpg"], paintings["png"], paintings["tif"]]
    originals = {p: (digest(p), np.asarray(Image.open(p).convert("RGB"))) for p in images}
    captions = {p: f"a {p.suffix[1:]} landscape at sunset" for p in images}
    with ExifTool(backup=backup) as exiftool:
        for image in images:
            assert exiftool.embed(image, captions[image], "artcap-default", {"beam": 5}, "awe") is None
    records = read_back(*images)
    for image in images:
        assert_caption_fields(records[image.name], captions[image], "artcap-default", {"beam": 5}, emotion="awe")
        assert np.array_equal(np.asarray(Image.open(image).convert("RGB")), originals[image][1])  # pixels untouched
        backup_file = image.with_name(image.name + "_original")
        assert backup_file.exists() == backup
        if backup:
            assert digest(backup_file) == originals[image][0]
    if backup:  # a second run keeps the first backup: it stays the true original
        assert embed_metadata(images[0], "again", "m", {"beam": 1}) is None
        assert digest(images[0].with_name(images[0].name + "_original")) == originals[images[0]][0]
        assert read_back(images[0])[images[0].name]["XMP-dc:Description"] == "again"


@needs_exiftool
def test_embed_reports_each_failing_image_and_goes_on(tmp_path, paintings):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is a text file")
    missing = tmp_path / "gone.jpg"
    with ExifTool() as exiftool:
        results = {p: exiftool.embed(p, "a caption", "m", {"beam": 1})
                   for p in [not_an_image, missing, paintings["jpg"]]}
    assert results[paintings["jpg"]] is None
    for bad in (not_an_image, missing):
        assert results[bad] is not None and "\n" not in results[bad] and results[bad].startswith(str(bad))
    assert "Not a valid JPG" in results[not_an_image]
    assert not_an_image.read_text() == "this is a text file"
    assert read_back(paintings["jpg"])[paintings["jpg"].name]["XMP-dc:Description"] == "a caption"


def test_embed_without_exiftool_is_one_line(monkeypatch, tmp_path, paintings):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH on which there is no exiftool
    before = digest(paintings["jpg"])
    for attempt in (lambda: ExifTool(), lambda: embed_metadata(paintings["jpg"], "c", "m", {"beam": 1})):
        with pytest.raises(ArtcapError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message and "exiftool" in message and "apt-get install libimage-exiftool-perl" in message
    assert digest(paintings["jpg"]) == before


@needs_exiftool
def test_metadata_writer_writes_sidecars_and_embeds_and_joins_failures(tmp_path, paintings):
    collection = paintings["jpg"].parent
    not_an_image = collection / "broken.png"
    not_an_image.write_bytes(b"\x89PNG but nothing more")
    mirror = tmp_path / "meta"
    writer = MetadataWriter(xmp_dir=mirror, root=collection, embed=True, backup=False)
    assert writer.describe() == f"xmp-dir:{mirror.as_posix()},embed-no-backup"
    with writer:
        assert writer.write(paintings["png"], "a sunset", "m", {"beam": 3}, "awe") is None
        error = writer.write(not_an_image, "never", "m", {"beam": 3})
    assert error is not None and "\n" not in error and str(not_an_image) in error
    records = read_back(paintings["png"], mirror / "landscape.png.xmp", mirror / "broken.png.xmp")
    for name in ("landscape.png", "landscape.png.xmp"):
        assert_caption_fields(records[name], "a sunset", "m", {"beam": 3}, emotion="awe")
    assert not (collection / "landscape.png.xmp").exists() and not (collection / "landscape.png_original").exists()
    assert MetadataWriter(sidecars=True).describe() == "xmp" and MetadataWriter().describe() == ""


def test_metadata_writer_without_exiftool_fails_before_any_image(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ArtcapError, match="exiftool, which is not on PATH"):
        with MetadataWriter(sidecars=True, embed=True):
            pass
    with MetadataWriter(sidecars=True) as writer:  # sidecars alone need no exiftool
        assert writer.write(tmp_path / "a.jpg", "c", "m", {"beam": 1}) is None
    assert (tmp_path / "a.jpg.xmp").is_file()


def test_the_mirror_tree_follows_the_input_folder(tmp_path, monkeypatch):
    collection = tmp_path / "collection"
    (collection / "sub").mkdir(parents=True)
    assert mirror_root([collection]) == collection
    monkeypatch.chdir(tmp_path)
    assert mirror_root(["collection/sub", "collection"]) == tmp_path
    image = Path("collection/sub/a.jpg")
    assert sidecar_path(image, xmp_dir="meta", root=mirror_root([image, "x.jpg"])) == \
        Path("meta/collection/sub/a.jpg.xmp")
