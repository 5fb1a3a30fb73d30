"""How artcap writes file names and text, in every output format: well-formed whatever the name.

    encode_name(Path("a\\nb.jpg"))        -> 'a\\\\nb.jpg'   (the two characters backslash, n)
    decode_name('caf\\\\xe9.jpg')         -> 'caf\\udce9.jpg' (os.fsdecode(b'caf\\xe9.jpg'): the file's real name)
    clean_text("a\\tcaption")            -> 'a\\\\tcaption'
    spreadsheet_cell("=HYPERLINK(1)")    -> "'=HYPERLINK(1)"

A file name is bytes; Python holds the bytes that are not UTF-8 as lone surrogates (os.fsdecode), which
no UTF-8 writer accepts. `encode_name` writes a name as printable text with C-style escapes, and
`decode_name` gives back exactly the name's bytes (os.fsencode(decode_name(encode_name(p))) ==
os.fsencode(p) for every name):

- a byte that is not part of valid UTF-8, and every ASCII control character: `\\xNN` (its byte value);
- tab, line feed, carriage return: `\\t`, `\\n`, `\\r`; a backslash: `\\\\`;
- any other character that breaks a line or an XML document (C1 controls, U+2028/U+2029, U+FFFE/U+FFFF,
  a surrogate): `\\uNNNN`;
- everything else, as itself.

So a name is one line, valid UTF-8 and legal XML in the text output, JSON, JSON Lines, CSV and XMP alike,
and a name that needs none of this is written unchanged. Other text (captions, error messages) goes
through `clean_text`: the same escapes, backslashes left as they are (it is not read back as a name).
"""

from __future__ import annotations

import os
import re
import unicodedata

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNSHORT = {"t": b"\t", "n": b"\n", "r": b"\r", "\\": b"\\"}
_ESCAPE = re.compile(r"\\(?:([tnr\\])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")
# What a spreadsheet reads as a formula (OWASP "CSV injection"), and the apostrophe that marks a cell as text.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "'")


def _escaped(ch: str) -> str | None:
    """The escape for a character that must not be written as itself, else None."""
    code = ord(ch)
    if ch in _SHORT:
        return _SHORT[ch]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00, which is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or code in (0xFFFE, 0xFFFF):
        return f"\\u{code:04x}"
    return None


def clean_text(text: str) -> str:
    """`text` as one line of valid UTF-8 that XML 1.0 can hold: each character that could break a line,
    a UTF-8 writer or an XML document is replaced by its escape (see the module's docstring)."""
    if text.isprintable():  # the common case, quickly
        return text
    return "".join(_escaped(ch) or ch for ch in text)


def encode_name(name: str | os.PathLike) -> str:
    """A file name (or path) as text that every output format holds as it is, and `decode_name` reverses."""
    text = os.fsdecode(name) if not isinstance(name, str) else name
    return "".join("\\\\" if ch == "\\" else (_escaped(ch) or ch) for ch in text)


def decode_name(text: str) -> str:
    """The file name `encode_name` wrote as `text` (as os.fsdecode holds it). ValueError when `text` holds
    a backslash that is not one of encode_name's escapes."""
    out = bytearray()
    position = 0
    while (backslash := text.find("\\", position)) >= 0:
        out += text[position:backslash].encode("utf-8", "surrogateescape")
        match = _ESCAPE.match(text, backslash)
        if match is None:
            raise ValueError(f"not an encoded file name: {text!r} (a lone backslash at {backslash})")
        short, byte, bmp, astral = match.groups()
        if short:
            out += _UNSHORT[short]
        elif byte:
            out.append(int(byte, 16))
        else:
            out += chr(int(bmp or astral, 16)).encode("utf-8", "surrogatepass")
        position = match.end()
    out += text[position:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(out))


def spreadsheet_cell(text: str) -> str:
    """A text cell a spreadsheet shows as the text, never runs as a formula (OWASP's advice for CSV
    injection): a cell that starts with = + - @ tab, carriage return or line feed gets a leading
    apostrophe, which spreadsheets take as "this cell is text" and do not show. A cell that starts with
    an apostrophe gets one too, so the shown value is always the text and a reader can take exactly one
    leading apostrophe away (`from_spreadsheet_cell`)."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def from_spreadsheet_cell(cell: str) -> str:
    """The text `spreadsheet_cell` wrote."""
    return cell[1:] if cell.startswith("'") else cell
