"""Cut the book's Chinese font down to the CJK characters its pages use.

    python tools/subset_cjk_font.py [SOURCE ...]      (`make book` runs it whenever a page changes)

The sources are the pages as committed (default: chapters/*.ipynb, book/*.ipynb, book/*.md): every string in a
notebook counts, markdown, code, stored outputs and widget state alike, with HTML character references decoded, so
whatever a page can show is covered. The characters kept are those in the CJK blocks below, the same ones that
book/_static/cjk.css gives to the font in its unicode-range.

Input: Noto Sans SC, regular and bold, fetched by book/fetch_vendor.sh into book/_fonts. Output, in
book/_vendor/cjk (served as _static/cjk): LLMBookCJK-Regular.woff and LLMBookCJK-Bold.woff, a few KB each, and
chars.txt, the characters they cover (written last: the Makefile's record that the subset is up to date).

WOFF, not WOFF2: fontTools writes WOFF with the standard library's zlib, while WOFF2 needs the compiled brotli module;
for a few dozen glyphs WOFF2 would save under 1 KB a file, and every browser reads WOFF.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from fontTools import subset  # type: ignore[import-untyped]
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
FONTS = ROOT / "book" / "_fonts"
OUT = ROOT / "book" / "_vendor" / "cjk"
FACES = {"Regular": "NotoSansSC_400Regular.ttf", "Bold": "NotoSansSC_700Bold.ttf"}
DEFAULT_SOURCES = ("chapters/*.ipynb", "book/*.ipynb", "book/*.md")

# CJK blocks, first and last code point. book/_static/cjk.css lists the same ranges (a package test checks).
CJK_RANGES = (
    (0x2E80, 0x2FDF),  # CJK radicals supplement, Kangxi radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation (、。「」 and the ideographic space)
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3100, 0x312F),  # bopomofo
    (0x31A0, 0x31EF),  # bopomofo extended, CJK strokes
    (0x3200, 0x33FF),  # enclosed CJK letters and months, CJK compatibility
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE10, 0xFE1F),  # vertical forms
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # halfwidth and fullwidth forms (，：（）！？)
    (0x20000, 0x2FA1F),  # extensions B to F, compatibility ideographs supplement
)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(first <= code <= last for first, last in CJK_RANGES)


def strings(value: object) -> Iterator[str]:
    """Every string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def cjk_characters(paths: Iterable[Path]) -> set[str]:
    """The CJK characters that the given pages (notebooks or markdown) can show."""
    found: set[str] = set()
    for path in paths:
        text = path.read_text(encoding="utf-8")
        parts = strings(json.loads(text)) if path.suffix == ".ipynb" else [text]
        for part in parts:
            found.update(char for char in html.unescape(part) if is_cjk(char))
    return found


def subset_font(source: Path, target: Path, chars: set[str]) -> None:
    options = subset.Options()
    options.flavor = "woff"
    options.hinting = False  # the source fonts carry no hints worth keeping at screen sizes
    options.name_IDs = [0, 1, 2, 3, 4, 5, 6, 13, 14]  # keep the copyright and licence records with the glyphs
    font = subset.load_font(str(source), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=sorted(map(ord, chars)))
    subsetter.subset(font)
    subset.save_font(font, str(target), options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", type=Path, help=f"pages to scan (default: {' '.join(DEFAULT_SOURCES)})")
    args = parser.parse_args(argv)
    sources = args.sources or sorted(path for pattern in DEFAULT_SOURCES for path in ROOT.glob(pattern))
    missing_fonts = [name for name in FACES.values() if not (FONTS / name).exists()]
    if missing_fonts:
        print(f"{FONTS} lacks {missing_fonts}: run `bash book/fetch_vendor.sh`", file=sys.stderr)
        return 1
    chars = cjk_characters(sources)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "chars.txt").unlink(missing_ok=True)
    for face, name in FACES.items():
        cmap = TTFont(FONTS / name, lazy=True).getBestCmap()
        lacking = sorted(char for char in chars if ord(char) not in cmap)
        if lacking:
            print(f"{name} has no glyph for {' '.join(f'{c} U+{ord(c):04X}' for c in lacking)}", file=sys.stderr)
            return 1
        subset_font(FONTS / name, OUT / f"LLMBookCJK-{face}.woff", chars)
    (OUT / "chars.txt").write_text("".join(sorted(chars)) + "\n", encoding="utf-8")
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KB" for p in sorted(OUT.glob("*.woff")))
    print(f"CJK font: {len(chars)} characters from {len(sources)} pages ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
