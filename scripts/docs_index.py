"""Write docs/index.md, the site's home page: the README with its links made relative to docs/."""

import re
from pathlib import Path

root = Path(__file__).resolve().parents[1]
readme = (root / "README.md").read_text(encoding="utf-8")


def relative(match: re.Match) -> str:
    target = match.group(1)
    if target.startswith(("http://", "https://", "#")):
        return match.group(0)
    if target.startswith("docs/"):
        return f"]({target[len('docs/'):]})"
    return f"](../{target})"


(root / "docs" / "index.md").write_text(re.sub(r"\]\(([^)\s]+)\)", relative, readme), encoding="utf-8")
