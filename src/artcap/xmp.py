"""Alt text where collection software reads it: XMP sidecars beside the images, or XMP embedded in
the image files by exiftool.

    error = write_sidecar(Path("a.jpg"), "a painting of a woman", "artcap-default", {"beam": 5})
    with ExifTool() as exiftool:                       # one exiftool process for many images
        error = exiftool.embed(Path("a.jpg"), "a painting of a woman", "artcap-default", {"beam": 5})
    with MetadataWriter(sidecars=True, embed=True) as writer:   # what a folder job uses
        error = writer.write(Path("a.jpg"), "a painting of a woman", "artcap-default", {"beam": 5})

Both return None on success or a one-line error naming the file, so a folder job can record the
failure of one image and go on with the others. What is written, in either place, by one ownership
rule (a person's words are never replaced):

- `Iptc4xmpCore:AltTextAccessibility` (IPTC Photo Metadata 2021.1 "Alt Text (Accessibility)") and
  `dc:description`, each a language alternative with `x-default` and `en` set to the caption (other
  languages already there are kept) -- each only where its x-default and en are absent, blank, or the
  caption artcap wrote there last (`overwrite_description=True` replaces them anyway);
- `xmp:CreatorTool` = "artcap VERSION", only where no other tool is named;
- in the artcap namespace (ARTCAP_NS, prefix `artcap`), always: `artcap:Caption` (the caption),
  `artcap:Model` (the model id), `artcap:Decoding` (the decoding settings as compact JSON) and, when
  given, `artcap:Emotion`.

Every text goes through names.clean_text, so any caption is legal XML. A read-only sidecar is left as
it is (a failed record), and so are its comments and every property not named above.

A sidecar is named after the whole image file name: `a.jpg` -> `a.jpg.xmp` (darktable's and
digiKam's convention, which exiftool reads and writes with `%d%f.%e.xmp`). Lightroom's `a.xmp`
would give `a.jpg` and `a.tif` the same sidecar. An existing sidecar is updated in place, every
other property kept; the image itself is never opened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Mapping

from . import __version__
from .errors import ArtcapError
from .images import single_input_folder
from .io import atomic_write_text
from .names import clean_text
from .paths import OutsideRootError, confined
from .text import one_line

ARTCAP_NS = "https://artcap.invalid/xmp/1.0/"  # an identifier, never fetched (.invalid can be nobody's domain)
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
X_NS = "adobe:ns:meta/"
DC_NS = "http://purl.org/dc/elements/1.1/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
IPTC_CORE_NS = "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# The prefixes a reader expects to see; ElementTree would otherwise write ns0, ns1, ...
STANDARD_PREFIXES = {"x": X_NS, "rdf": RDF_NS, "dc": DC_NS, "xmp": XMP_NS, "Iptc4xmpCore": IPTC_CORE_NS,
                     "artcap": ARTCAP_NS}
SIDECAR_SUFFIX = ".xmp"
CAPTION_LANGUAGES = ("x-default", "en")
XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
XPACKET_END = '<?xpacket end="w"?>'
EXIFTOOL_INSTALL_HINT = ("install it (Debian/Ubuntu: apt-get install libimage-exiftool-perl; macOS: brew install "
                         "exiftool) or write sidecars with --xmp instead")


@dataclass(frozen=True)
class CaptionMetadata:
    """What artcap writes about one image, in XMP terms. Every text goes through names.clean_text, so a
    caption from any vocabulary is legal XML and one line."""
    caption: str
    model_id: str
    decoding: Mapping[str, Any]
    emotion: str | None = None

    @property
    def text(self) -> str:
        return clean_text(self.caption)

    @property
    def creator_tool(self) -> str:
        return f"artcap {__version__}"

    @property
    def decoding_json(self) -> str:
        return json.dumps(dict(self.decoding), sort_keys=True, separators=(",", ":"))

    def artcap_properties(self) -> dict[tuple[str, str], str | None]:
        """artcap's own properties, always written; None removes one (a stale emotion must not stay)."""
        return {(ARTCAP_NS, "Model"): clean_text(self.model_id), (ARTCAP_NS, "Decoding"): self.decoding_json,
                (ARTCAP_NS, "Emotion"): None if self.emotion is None else clean_text(self.emotion),
                (ARTCAP_NS, "Caption"): self.text}


# ---- the ownership rule: which fields artcap may write -------------------------------------------------

CAPTION_PROPERTIES = ((IPTC_CORE_NS, "AltTextAccessibility"), (DC_NS, "description"))
CREATOR_TOOL = (XMP_NS, "CreatorTool")


@dataclass(frozen=True)
class ExistingFields:
    """What a sidecar or image already holds in the fields artcap may write."""
    # each caption property -> {language: text}; None when it is there but not a language alternative
    alternatives: Mapping[tuple[str, str], Mapping[str, str] | None]
    creator_tool: str | None = None
    previous_caption: str | None = None  # the caption artcap wrote there last (artcap:Caption)


def caption_properties_to_write(existing: ExistingFields, overwrite: bool = False) -> list[tuple[str, str]]:
    """The caption properties artcap writes the caption into: each one whose x-default and en entries are
    absent, blank, or the caption artcap wrote there last. One that holds a person's words is left as it
    is (the caption still goes into the other one, and always into artcap:Caption), unless `overwrite`
    (--overwrite-description)."""
    def free(entries: Mapping[str, str] | None) -> bool:
        if entries is None:
            return False
        return all(not text.strip() or text == existing.previous_caption
                   for language, text in entries.items() if language in CAPTION_LANGUAGES)
    return [p for p in CAPTION_PROPERTIES if overwrite or free(existing.alternatives.get(p, {}))]


def creator_tool_is_free(existing: ExistingFields) -> bool:
    """xmp:CreatorTool names the tool that made the resource: artcap names itself only where none is named."""
    return existing.creator_tool is None or existing.creator_tool.startswith("artcap ")


# ---- sidecars -----------------------------------------------------------------------------------------

def sidecar_path(image: str | os.PathLike, *, xmp_dir: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None) -> Path:
    """Where the sidecar of `image` goes: `IMAGE.xmp` beside it (`a.jpg` -> `a.jpg.xmp`), or, with
    `xmp_dir`, the same name in a mirror tree: the image's path relative to `root` (its absolute path
    when it is not under `root`) re-rooted at `xmp_dir`, for collections artcap must not write into."""
    image = Path(image)
    name = image.name + SIDECAR_SUFFIX
    what = f"{image}: its sidecar"  # paths.confined: never written (or read) through a link out of its folder
    if xmp_dir is None:
        return confined(image.parent, name, what)
    relative = _mirror_relative(image, Path(root) if root is not None else None)
    return confined(xmp_dir, (relative.parent / name).as_posix(), what)


def mirror_root(inputs) -> Path:
    """The folder a job's mirror tree (--xmp-dir) is relative to: the input folder when one folder
    is captioned (as the record file's paths are), else the current folder."""
    return single_input_folder(inputs) or Path.cwd()


def _mirror_relative(image: Path, root: Path | None) -> PurePath:
    if root is not None:
        try:
            relative = image.absolute().relative_to(root.absolute())
            if ".." not in relative.parts:
                return relative
        except ValueError:
            pass
    absolute = Path(os.path.abspath(image))
    return PurePath(*absolute.parts[1:])  # drop the anchor: /data/x.jpg -> DIR/data/x.jpg.xmp


def write_sidecar(image: str | os.PathLike, caption: str, model_id: str, decoding: Mapping[str, Any],
                  emotion: str | None = None, *, sidecar: str | os.PathLike | None = None,
                  overwrite_description: bool = False) -> str | None:
    """Write or update the XMP sidecar of `image` (default: `sidecar_path(image)`). Returns None,
    or a one-line error naming the sidecar: an existing sidecar that is not XMP or is read-only is left
    as it is. A full disk raises io's ArtcapError instead: no later image could be written either."""
    path = Path(sidecar) if sidecar is not None else sidecar_path(image)
    metadata = CaptionMetadata(caption, model_id, decoding, emotion)
    try:
        existing = path.read_bytes() if path.exists() else None
    except OSError as e:
        return f"{path}: cannot read the existing sidecar ({e.strerror or e})"
    if existing is not None and _read_only(path):
        return (f"{path}: the sidecar is read-only, so artcap leaves it as it is; make it writable to have the "
                f"caption added, or write the sidecars elsewhere with --xmp-dir")
    try:
        text = update_xmp(existing, metadata, overwrite_description=overwrite_description)
    except ArtcapError as e:
        return f"{path}: {e}"
    try:
        atomic_write_text(path, text)
    except OSError as e:
        return (f"{path}: cannot write the sidecar ({e.strerror or e}); for a read-only collection "
                f"write the sidecars elsewhere with --xmp-dir")
    return None


def _read_only(path: Path) -> bool:
    """No one may write it (its mode says so even to root, who may write anything), or we may not."""
    return not (path.stat().st_mode & 0o222) or not os.access(path, os.W_OK)


def update_xmp(existing: bytes | None, metadata: CaptionMetadata, *, overwrite_description: bool = False) -> str:
    """The XMP packet `existing` (None: a new one) with artcap's fields set, as text. Only the fields
    the ownership rule gives artcap are written (caption_properties_to_write, creator_tool_is_free,
    artcap's own namespace); everything else, comments included, is kept. Raises ArtcapError when
    `existing` is not XMP, so a file artcap cannot read is never replaced."""
    new = existing is None or not existing.strip()
    root, outside = (_new_packet(), ([], [])) if new else _parse_packet(existing)
    rdf = root if root.tag == f"{{{RDF_NS}}}RDF" else root.find(f".//{{{RDF_NS}}}RDF")
    if rdf is None:
        raise ArtcapError("not an XMP sidecar (no rdf:RDF element); move it away or fix it")
    descriptions = rdf.findall(f"{{{RDF_NS}}}Description")
    if not descriptions:
        descriptions = [ET.SubElement(rdf, f"{{{RDF_NS}}}Description", {f"{{{RDF_NS}}}about": ""})]
    fields = _existing_fields(descriptions)
    for namespace, name in caption_properties_to_write(fields, overwrite_description):
        _set_language_alternative(descriptions, namespace, name, metadata.text)
    if creator_tool_is_free(fields):
        _set_simple(descriptions, *CREATOR_TOOL, metadata.creator_tool)
    for (namespace, name), value in metadata.artcap_properties().items():
        _set_simple(descriptions, namespace, name, value)
    if new and root.tag == f"{{{X_NS}}}xmpmeta":
        root.set(f"{{{X_NS}}}xmptk", metadata.creator_tool)
    return _serialize(root, outside)


def _existing_fields(descriptions: list[ET.Element]) -> ExistingFields:
    def simple(namespace: str, name: str) -> str | None:
        tag = f"{{{namespace}}}{name}"
        for description in descriptions:
            if tag in description.attrib:
                return description.attrib[tag]
            child = description.find(tag)
            if child is not None:
                return child.text or ""
        return None

    alternatives: dict[tuple[str, str], dict[str, str] | None] = {}
    for namespace, name in CAPTION_PROPERTIES:
        tag = f"{{{namespace}}}{name}"
        if any(tag in d.attrib for d in descriptions):
            alternatives[(namespace, name)] = None
            continue
        for element in (e for d in descriptions for e in d.findall(tag)):
            alt = element.find(f"{{{RDF_NS}}}Alt")
            if alt is None:
                alternatives[(namespace, name)] = None
                break
            entries = alternatives.setdefault((namespace, name), {})
            if entries is not None:
                entries.update((li.get(XML_LANG, ""), li.text or "") for li in alt.findall(f"{{{RDF_NS}}}li"))
    previous = simple(ARTCAP_NS, "Caption")
    if previous is None and simple(ARTCAP_NS, "Model") is not None:  # written before artcap:Caption existed
        previous = (alternatives.get(CAPTION_PROPERTIES[0]) or {}).get("x-default")
    return ExistingFields(alternatives, simple(*CREATOR_TOOL), previous)


def _new_packet() -> ET.Element:
    root = ET.Element(f"{{{X_NS}}}xmpmeta")
    ET.SubElement(root, f"{{{RDF_NS}}}RDF")
    return root


def _parse_packet(data: bytes) -> tuple[ET.Element, tuple[list[str], list[str]]]:
    """The packet's root element, with its comments and processing instructions, and the comments and
    processing instructions before and after it (the xpacket wrapper aside: artcap writes its own)."""
    prefixes: dict[str, str] = {}
    outside: tuple[list[str], list[str]] = ([], [])
    depth, seen_root = 0, False
    parser = ET.XMLPullParser(events=("start-ns", "start", "end", "comment", "pi"))
    try:
        parser.feed(data)
        parser.close()
        for event, item in parser.read_events():
            if event == "start-ns":
                prefixes.setdefault(*item)
            elif event in ("start", "end"):
                depth += 1 if event == "start" else -1
                seen_root = True
            elif depth == 0 and not (event == "pi" and (item.text or "").startswith("xpacket")):
                outside[seen_root].append(ET.tostring(item, encoding="unicode"))
        tree = ET.TreeBuilder(insert_comments=True, insert_pis=True)  # a person's comments are kept
        root = ET.fromstring(data, parser=ET.XMLParser(target=tree))
    except ET.ParseError as e:
        raise ArtcapError(f"not readable XML ({e}); artcap leaves it as it is: fix it or move it away") from None
    # Keep the file's own prefixes (ElementTree would otherwise invent ns0, ns1, ... on writing).
    for prefix, uri in prefixes.items():
        if prefix and not re.fullmatch(r"ns\d+", prefix) and uri not in STANDARD_PREFIXES.values():
            ET.register_namespace(prefix, uri)
    return root, outside


def _serialize(root: ET.Element, outside: tuple[list[str], list[str]]) -> str:
    for prefix, uri in STANDARD_PREFIXES.items():
        ET.register_namespace(prefix, uri)
    ET.indent(root, space=" ")
    # ElementTree writes a carriage return in text as it is, which a reader takes for a line feed: as a
    # character reference it stays one (only text can hold one here: a parsed comment never does).
    body = ET.tostring(root, encoding="unicode").replace("\r", "&#13;")
    before, after = ("".join(f"{item}\n" for item in items) for items in outside)
    return f"{XPACKET_BEGIN}\n{before}{body}\n{after}{XPACKET_END}\n"


def _remove_property(descriptions: list[ET.Element], tag: str) -> list[ET.Element]:
    """Remove `tag` wherever it is (as an attribute or a child); return the removed elements."""
    removed = []
    for description in descriptions:
        description.attrib.pop(tag, None)
        for child in description.findall(tag):
            description.remove(child)
            removed.append(child)
    return removed


def _set_simple(descriptions: list[ET.Element], namespace: str, name: str, value: str | None) -> None:
    tag = f"{{{namespace}}}{name}"
    _remove_property(descriptions, tag)
    if value is not None:
        ET.SubElement(descriptions[0], tag).text = value


def _set_language_alternative(descriptions: list[ET.Element], namespace: str, name: str, text: str) -> None:
    """Set the x-default and en entries of an rdf:Alt property, keeping its other languages and comments."""
    tag = f"{{{namespace}}}{name}"
    kept: list[ET.Element] = []
    for old in _remove_property(descriptions, tag):
        alt = old.find(f"{{{RDF_NS}}}Alt")
        if alt is not None:
            kept += [item for item in alt if item.tag is ET.Comment or (
                item.tag == f"{{{RDF_NS}}}li" and item.get(XML_LANG) not in CAPTION_LANGUAGES)]
    alt = ET.SubElement(ET.SubElement(descriptions[0], tag), f"{{{RDF_NS}}}Alt")
    for language in CAPTION_LANGUAGES:  # x-default first: readers that take one value take the first
        ET.SubElement(alt, f"{{{RDF_NS}}}li", {XML_LANG: language}).text = text
    alt.extend(kept)


# ---- embedding with exiftool ------------------------------------------------------------------------

# exiftool writes only the XMP properties it knows; this config teaches it artcap's namespace.
EXIFTOOL_CONFIG = f"""\
%Image::ExifTool::UserDefined = (
    'Image::ExifTool::XMP::Main' => {{
        artcap => {{ SubDirectory => {{ TagTable => 'Image::ExifTool::UserDefined::artcap' }} }},
    }},
);
%Image::ExifTool::UserDefined::artcap = (
    GROUPS => {{ 0 => 'XMP', 1 => 'XMP-artcap', 2 => 'Image' }},
    NAMESPACE => {{ 'artcap' => '{ARTCAP_NS}' }},
    WRITABLE => 'string',
    Model => {{ }},
    Decoding => {{ }},
    Emotion => {{ }},
    Caption => {{ }},
);
1;
"""


def find_exiftool() -> str:
    """The exiftool executable, or a one-line ArtcapError saying how to get it."""
    path = shutil.which("exiftool")
    if path is None:
        raise ArtcapError(f"--embed needs exiftool, which is not on PATH: {EXIFTOOL_INSTALL_HINT}")
    return path


# exiftool's names for the properties artcap writes
EXIFTOOL_TAGS = {(IPTC_CORE_NS, "AltTextAccessibility"): "XMP-iptcCore:AltTextAccessibility",
                 (DC_NS, "description"): "XMP-dc:Description", CREATOR_TOOL: "XMP-xmp:CreatorTool",
                 **{(ARTCAP_NS, name): f"XMP-artcap:{name}" for name in ("Model", "Decoding", "Emotion", "Caption")}}


def exiftool_arguments(metadata: CaptionMetadata, existing: ExistingFields | None = None,
                       overwrite_description: bool = False) -> list[str]:
    """The exiftool tag assignments that write `metadata` into a file holding `existing` (None: a file
    with none of these fields): the same fields, by the same rule, as a sidecar."""
    existing = existing or ExistingFields({})
    arguments = []
    for prop in caption_properties_to_write(existing, overwrite_description):
        arguments += [f"-{EXIFTOOL_TAGS[prop]}={metadata.text}", f"-{EXIFTOOL_TAGS[prop]}-en={metadata.text}"]
    values = dict(metadata.artcap_properties())
    if creator_tool_is_free(existing):
        values[CREATOR_TOOL] = metadata.creator_tool
    arguments += [f"-{EXIFTOOL_TAGS[prop]}={value if value is not None else ''}" for prop, value in values.items()]
    return arguments


def _exiftool_fields(found: Mapping[str, Any]) -> ExistingFields:
    """ExistingFields from exiftool's JSON reading of a file (`-j -G1`, EXIFTOOL_TAGS)."""
    def value(tag: str) -> str | None:
        return None if tag not in found else str(found[tag])

    alternatives = {prop: {language: value(tag) for language, tag in
                           (("x-default", EXIFTOOL_TAGS[prop]), ("en", f"{EXIFTOOL_TAGS[prop]}-en"))
                           if value(tag) is not None} for prop in CAPTION_PROPERTIES}
    previous = value("XMP-artcap:Caption")
    if previous is None and value("XMP-artcap:Model") is not None:  # written before artcap:Caption existed
        previous = alternatives[CAPTION_PROPERTIES[0]].get("x-default")
    return ExistingFields(alternatives, value(EXIFTOOL_TAGS[CREATOR_TOOL]), previous)


class ExifTool:
    """One exiftool process (`-stay_open`) that writes artcap's XMP into many image files.

    Each `embed` is one exiftool command on the open process (no start-up per image); its output
    says whether that file was updated, so a failure is reported for that image only. exiftool keeps
    the untouched file as `NAME_original` unless `backup=False`; an existing `_original` is never
    replaced, so it stays the true original when a job is re-run.
    """

    def __init__(self, *, backup: bool = True, executable: str | None = None):
        self.backup = backup
        executable = executable or find_exiftool()
        fd, self._config = tempfile.mkstemp(prefix="artcap-exiftool-", suffix=".config")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(EXIFTOOL_CONFIG)
        try:
            # -config must come first; -@ - reads one argument per line from stdin.
            self._process = subprocess.Popen(
                [executable, "-config", self._config, "-stay_open", "True", "-@", "-"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as e:
            os.unlink(self._config)
            raise ArtcapError(f"{executable}: cannot start exiftool ({e.strerror or e}); {EXIFTOOL_INSTALL_HINT}") from None
        self._sequence = 0

    def embed(self, image: str | os.PathLike, caption: str, model_id: str, decoding: Mapping[str, Any],
              emotion: str | None = None, *, overwrite_description: bool = False) -> str | None:
        """Write the caption's XMP into `image` (only the fields the ownership rule gives artcap, as in a
        sidecar). Returns None, or a one-line error naming the image."""
        image = Path(image)
        if "\n" in str(image) or "\r" in str(image):
            return f"{image}: exiftool cannot be given a file name with a line break; rename the file"
        if not image.is_file():
            return f"{image}: no such image file"
        existing = self.read_fields(image)
        if isinstance(existing, str):
            return existing
        arguments = exiftool_arguments(CaptionMetadata(caption, model_id, decoding, emotion), existing,
                                       overwrite_description)
        arguments += ["-charset", "filename=utf8", "-m"]  # -m: minor warnings do not stop the write
        if not self.backup:
            arguments.append("-overwrite_original")
        temporary = image.with_name(image.name + "_exiftool_tmp")  # where exiftool writes the new file first
        was_there = temporary.exists()
        try:
            error = _embed_error(image, self.execute([*arguments, os.path.abspath(image)]))
        finally:
            if not was_there:  # what an exiftool that failed or died left behind would make every retry fail
                temporary.unlink(missing_ok=True)
        if error and was_there:
            error += f"; if no exiftool is running, remove {temporary.name}, left by an interrupted one"
        return error

    def read_fields(self, image: Path) -> ExistingFields | str:
        """What `image` holds in the fields artcap may write, or a one-line error naming it."""
        output = self.execute(["-j", "-G1", "-charset", "filename=utf8", *(f"-{t}" for t in EXIFTOOL_TAGS.values()),
                               *(f"-{EXIFTOOL_TAGS[p]}-en" for p in CAPTION_PROPERTIES), os.path.abspath(image)])
        try:
            return _exiftool_fields(json.loads(output[output.index("["):])[0])
        except (ValueError, IndexError, KeyError):
            return f"{image}: exiftool cannot read its metadata ({one_line(output) or 'no answer'})"

    def execute(self, arguments: list[str]) -> str:
        """Run one exiftool command on the open process; return what it printed (stdout and stderr)."""
        if self._process.poll() is not None:
            raise ArtcapError(f"exiftool stopped unexpectedly (exit code {self._process.returncode})")
        self._sequence += 1
        lines = [*arguments, f"-execute{self._sequence}"]
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"".join(os.fsencode(line) + b"\n" for line in lines))
        self._process.stdin.flush()
        ready = f"{{ready{self._sequence}}}".encode()
        output = []
        while (line := self._process.stdout.readline()):
            if line.rstrip(b"\r\n") == ready:
                return b"".join(output).decode("utf-8", "replace")
            output.append(line)
        said = one_line(b"".join(output).decode("utf-8", "replace"))
        try:
            code = self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise ArtcapError(f"exiftool stopped unexpectedly ({how}){': ' + said if said else ''}; "
                          f"run the same command again to resume")

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.write(b"-stay_open\nFalse\n")
                self._process.stdin.close()
                self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        if os.path.exists(self._config):
            os.unlink(self._config)

    def __enter__(self) -> "ExifTool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _embed_error(image: Path, output: str) -> str | None:
    """None when exiftool's summary says the file was updated, else its error lines as one line."""
    if re.search(r"^\s*1 image files? (updated|unchanged)", output, re.MULTILINE):
        return None
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("Error")]
    reason = "; ".join(errors) or one_line(output) or "exiftool wrote nothing"
    reason = reason.replace(f" - {os.path.abspath(image)}", "")  # the path is named once, at the front
    return f"{image}: exiftool could not write the metadata ({reason})"


def embed_metadata(image: str | os.PathLike, caption: str, model_id: str, decoding: Mapping[str, Any],
                   emotion: str | None = None, *, backup: bool = True, overwrite_description: bool = False) -> str | None:
    """`ExifTool.embed` for a single image (a folder job keeps one ExifTool open instead)."""
    with ExifTool(backup=backup) as exiftool:
        return exiftool.embed(image, caption, model_id, decoding, emotion, overwrite_description=overwrite_description)


# ---- what a folder job writes ---------------------------------------------------------------------------

@dataclass
class MetadataWriter:
    """The metadata a folder job writes for each captioned image: a sidecar beside it (`sidecars`),
    a sidecar in a mirror tree under `xmp_dir` (paths relative to `root`), and/or XMP embedded by
    exiftool (`embed`, keeping `_original` backups unless `backup=False`).

    Use it as a context manager: entering starts exiftool when embedding, so a missing exiftool is
    one ArtcapError before any image is captioned.
    """
    sidecars: bool = False
    xmp_dir: Path | None = None
    root: Path | None = None
    embed: bool = False
    backup: bool = True
    overwrite_description: bool = False  # replace a person's alt text and description (--overwrite-description)
    _exiftool: ExifTool | None = field(default=None, init=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.sidecars or self.xmp_dir is not None or self.embed

    def describe(self) -> str:
        """The settings as one string for a job's identity: '' when nothing is written."""
        parts = []
        if self.xmp_dir is not None:
            parts.append(f"xmp-dir:{Path(os.path.abspath(self.xmp_dir)).as_posix()}")
        elif self.sidecars:
            parts.append("xmp")
        if self.embed:
            parts.append("embed" if self.backup else "embed-no-backup")
        if self.overwrite_description and parts:
            parts.append("overwrite-description")
        return ",".join(parts)

    def __enter__(self) -> "MetadataWriter":
        if self.embed and self._exiftool is None:
            self._exiftool = ExifTool(backup=self.backup)
        return self

    def __exit__(self, *exc) -> None:
        if self._exiftool is not None:
            self._exiftool.close()
            self._exiftool = None

    def write(self, image: str | os.PathLike, caption: str, model_id: str, decoding: Mapping[str, Any],
              emotion: str | None = None) -> str | None:
        """Write what is enabled for one image; None, or the failures joined into one line."""
        errors = []
        if self.sidecars or self.xmp_dir is not None:
            try:
                target = sidecar_path(image, xmp_dir=self.xmp_dir, root=self.root)
                errors.append(write_sidecar(image, caption, model_id, decoding, emotion, sidecar=target,
                                            overwrite_description=self.overwrite_description))
            except OutsideRootError as e:  # this image's failure; the others go on
                errors.append(str(e))
        if self.embed:
            if self._exiftool is None:
                raise RuntimeError("MetadataWriter.write with embed=True needs `with MetadataWriter(...)`")
            errors.append(self._exiftool.embed(image, caption, model_id, decoding, emotion,
                                               overwrite_description=self.overwrite_description))
        return "; ".join(e for e in errors if e) or None
