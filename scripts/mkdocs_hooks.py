"""MkDocs hooks for the artcap site (mkdocs.yml: `hooks:`).

The README is the site's home page, read in place, so GitHub and the site show one text. The pages link the
GitHub way, relative to the file: to other pages, and to repository files outside docs/ (`../README.md`,
`../src/artcap/models/default/MODEL_CARD.md`), which the site does not serve. A link to an existing file outside
docs/ is rewritten here: the README's to the home page, any other to the file's path in code. Every other link is
left to MkDocs, which (mkdocs.yml: validation) fails `mkdocs build --strict` on a missing page, file or anchor.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
HOME = "index.md"

LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
FENCED = re.compile(r"(?ms)^```.*?^```")  # code blocks hold no links


def on_files(files, config):
    files.append(File.generated(config, HOME, abs_src_path=str(README)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    uri = page.file.src_uri
    source_dir = ROOT if uri == HOME else (DOCS / uri).parent  # where the file really is
    site_dir = (DOCS / uri).parent  # where MkDocs places it
    rewrite = lambda match: _rewrite(match, source_dir, site_dir)  # noqa: E731
    pieces, end = [], 0
    for block in FENCED.finditer(markdown):
        pieces += [LINK.sub(rewrite, markdown[end:block.start()]), block.group(0)]
        end = block.end()
    return "".join(pieces) + LINK.sub(rewrite, markdown[end:])


def _rewrite(match: re.Match, source_dir: Path, site_dir: Path) -> str:
    bang, text, link = match.groups()
    if link.startswith(("http://", "https://", "mailto:", "#")):
        return match.group(0)
    target, hash_, anchor = link.partition("#")
    path = (source_dir / target).resolve()
    if path.is_relative_to(DOCS) or not path.exists():
        # MkDocs checks these, relative to where it places the page: a missing one fails the strict build.
        return f"{bang}[{text}]({Path(os.path.relpath(path, site_dir)).as_posix()}{hash_}{anchor})"
    if path == README:
        return f"[{text}]({Path(os.path.relpath(DOCS / HOME, site_dir)).as_posix()}{hash_}{anchor})"
    return f"{text} (`{path.relative_to(ROOT).as_posix()}`)"
