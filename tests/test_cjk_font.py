"""The book's Chinese font (tools/subset_cjk_font.py, book/_static/cjk.css) covers exactly what the pages show.

The font files are build outputs: `make setup` (part of `make book` and `make test`) fetches Noto Sans SC and cuts it
down to the CJK characters of the pages, again whenever a page changes. These checks read the pages on their own,
so a page that gained a character the subset lacks, a stale subset or a stylesheet that does not give the font those
characters fails here, before any browser.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from fontTools.ttLib import TTFont

ROOT = Path(__file__).resolve().parents[1]
CJK_DIR = ROOT / "book" / "_vendor" / "cjk"
CSS = ROOT / "book" / "_static" / "cjk.css"
PAGES = sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("book/*.ipynb"), *ROOT.glob("book/*.md")])
# Han ideographs (with extensions and compatibility forms), radicals, kana, bopomofo, CJK punctuation, full-width forms.
CJK = re.compile("[\u2e80-\u33ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe10-\ufe1f\ufe30-\ufe4f\uff00-\uffef"
                 "\U00020000-\U0002fa1f]")
FACES = ("LLMBookCJK-Regular.woff", "LLMBookCJK-Bold.woff")


def page_text(path: Path) -> str:
    """What a page can show: a notebook's every string (markdown, code, outputs, widget state), references decoded."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        text = json.dumps(json.loads(text), ensure_ascii=False)
    return html.unescape(text)


@pytest.fixture(scope="module")
def used() -> set[str]:
    chars = {char for path in PAGES for char in CJK.findall(page_text(path))}
    assert set("零一二三四五六七八九十百千万亿两") <= chars, "the scan should find Chapter 1's Chinese numerals"
    return chars


@pytest.fixture(scope="module")
def covered() -> dict[str, set[str]]:
    missing = [name for name in FACES if not (CJK_DIR / name).exists()]
    if missing:
        pytest.fail(f"{CJK_DIR} lacks {missing}: run `make setup` (book/fetch_vendor.sh, tools/subset_cjk_font.py)")
    return {name: {chr(code) for code in TTFont(CJK_DIR / name).getBestCmap()} for name in FACES}


def unicode_ranges() -> list[tuple[int, int]]:
    """Every U+XXXX-YYYY range named by a unicode-range in book/_static/cjk.css."""
    css = re.sub(r"/\*.*?\*/", "", CSS.read_text(encoding="utf-8"), flags=re.S)
    declarations = re.findall(r"unicode-range\s*:\s*([^;]+);", css)
    assert declarations, "cjk.css declares no unicode-range"
    ranges = []
    for declaration in declarations:
        for first, last in re.findall(r"U\+([0-9A-Fa-f]+)(?:-([0-9A-Fa-f]+))?", declaration):
            ranges.append((int(first, 16), int(last or first, 16)))
    return ranges


def test_the_subset_holds_exactly_the_cjk_characters_of_the_pages(used, covered):
    for name, chars in covered.items():
        assert not used - chars, f"{name} lacks {''.join(sorted(used - chars))}: the subset is stale"
        assert not chars - used, f"{name} holds characters no page uses: {''.join(sorted(chars - used))}"
    assert (CJK_DIR / "chars.txt").read_text(encoding="utf-8").strip() == "".join(sorted(used))


def test_the_stylesheet_gives_the_font_every_cjk_character_and_no_latin(used, covered):
    ranges = unicode_ranges()

    def in_range(char: str) -> bool:
        return any(first <= ord(char) <= last for first, last in ranges)

    assert all(in_range(char) for chars in covered.values() for char in chars | used)
    latin = [chr(code) for code in range(0x20, 0x2E80)]  # Latin, Greek, Cyrillic, general punctuation, symbols
    assert not [char for char in latin if in_range(char)], "the CJK face would take over non-CJK characters"


def test_the_stylesheet_serves_the_subset_and_the_licence_travels_with_it():
    css = CSS.read_text(encoding="utf-8")
    sources = re.findall(r'src:\s*url\("cjk/([^"]+)"\)', css)
    assert sorted(sources) == sorted(FACES)
    assert '"LLMBook CJK", var(--pst-font-family-base-system)' in css
    assert '"LLMBook CJK", var(--pst-font-family-monospace-system)' in css
    licence = CJK_DIR / "OFL.txt"
    assert licence.exists() and "SIL OPEN FONT LICENSE Version 1.1" in licence.read_text(encoding="utf-8")
