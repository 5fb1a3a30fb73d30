"""The documentation site builds with `mkdocs build --strict` (what `make docs` and CI run), and a broken link of
any kind fails that build: a missing page, a missing anchor, a missing repository file outside docs/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def copy_of_the_docs(tmp_path: Path) -> Path:
    """What the site is built from, copied, so a test can break it."""
    copy = tmp_path / "repo"
    cards = [card.relative_to(ROOT) for card in ROOT.glob("src/artcap/models/*/MODEL_CARD.md")]
    for name in ["mkdocs.yml", "README.md", "scripts/mkdocs_hooks.py", *cards]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "docs", copy / "docs")
    return copy


def test_the_site_builds_strict_with_the_readme_as_home_page(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "make demo" in home and 'href="captioning/"' in home  # the README, its docs/ links made site-relative
    models = (tmp_path / "site" / "models" / "index.html").read_text(encoding="utf-8")
    assert "<code>src/artcap/models/default/MODEL_CARD.md</code>" in models  # a repository file, named


def test_the_copy_builds_strict_before_it_is_broken(tmp_path):
    result = build(copy_of_the_docs(tmp_path), tmp_path / "site")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("link", ["[gone](no-such-page.md)", "[gone](data.md#no-such-heading)",
                                  "[gone](../src/artcap/no_such_module.py)", "[gone](../README.md#no-such-heading)"])
def test_a_broken_link_fails_the_strict_build(tmp_path, link):
    copy = copy_of_the_docs(tmp_path)
    with open(copy / "docs" / "data.md", "a", encoding="utf-8") as page:
        page.write(f"\nSee {link}.\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0, f"{link} did not fail the strict build"
    assert link.split("(")[1].rstrip(")").split("#")[-1] in result.stderr, result.stderr
