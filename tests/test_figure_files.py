"""The hand-drawn SVG figures under chapters/figures/: standalone, self-contained, English-only, true to the code.

An SVG shown through <img> can load nothing (no web fonts, images or scripts), and a reader's system may have no
Chinese font, so the files must draw everything themselves in a generic font stack.
"""

from __future__ import annotations

import importlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from torch import nn

FIGURES = Path(__file__).resolve().parents[1] / "chapters" / "figures"
SVG = "{http://www.w3.org/2000/svg}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"

# Package classes that transformer.svg labels, by module.
TRANSFORMER_CLASSES = {
    "llmbook.layers": ("EncoderLayer", "DecoderLayer", "FeedForward"),
    "llmbook.attention": ("MultiHeadAttention",),
    "llmbook.positional": ("SinusoidalPositionalEncoding",),
}
# CJK punctuation, kana, ideographs, Hangul, compatibility ideographs, full-width forms, the supplementary planes.
CJK = re.compile(
    "[\u2e80-\u303f\u3040-\u30ff\u3100-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff]"
)


def svg_files() -> list[Path]:
    return sorted(FIGURES.glob("*.svg"))


def svg_text(root: ET.Element) -> str:
    return " ".join("".join(el.itertext()) for el in root.iter(f"{SVG}text"))


def test_transformer_figure_exists():
    assert (FIGURES / "transformer.svg").is_file()


@pytest.mark.parametrize("path", svg_files(), ids=lambda p: p.name)
def test_svg_is_standalone_and_self_contained(path: Path):
    raw = path.read_text(encoding="utf-8")
    assert len(raw.encode()) < 25_000, f"{path.name} is {len(raw.encode())} bytes"
    root = ET.fromstring(raw)
    assert root.tag == f"{SVG}svg"
    view_box = [float(v) for v in root.get("viewBox", "").replace(",", " ").split()]
    assert len(view_box) == 4 and view_box[2] > 0 and view_box[3] > 0
    assert "sans-serif" in root.get("font-family", "")
    tags = {el.tag.removeprefix(SVG) for el in root.iter()}
    assert not tags & {"script", "image", "foreignObject", "iframe", "video", "audio"}, tags
    for el in root.iter():
        for name in ("href", XLINK_HREF):
            href = el.get(name)
            assert href is None or href.startswith("#"), f"external reference {href!r} in <{el.tag}>"
        for value in el.attrib.values():
            assert "url(" not in value or re.fullmatch(r"url\(#[\w-]+\)", value), value
    assert not re.search(r"url\((?!#)|@import|@font-face|javascript:", raw)
    assert not CJK.search(raw), f"CJK character {CJK.search(raw).group()!r} in {path.name}"
    sizes = [float(s) for s in re.findall(r'font-size(?:="|:\s*)([\d.]+)', raw)]
    assert sizes and min(sizes) >= 11, sizes


def test_transformer_figure_labels_classes_that_exist():
    root = ET.parse(FIGURES / "transformer.svg").getroot()
    text = svg_text(root)
    for module_name, names in TRANSFORMER_CLASSES.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert re.search(rf"\b{name}\b", text), f"{name} is not labelled in transformer.svg"
            cls = getattr(module, name)
            assert isinstance(cls, type) and issubclass(cls, nn.Module)


def test_transformer_figure_matches_the_post_ln_model():
    """What the figure states about the model: post-LN by default, no final LayerNorm, a bias-free output layer."""
    from llmbook.layers import DecoderLayer, EncoderLayer
    from llmbook.transformer import PRESETS, Transformer

    text = svg_text(ET.parse(FIGURES / "transformer.svg").getroot())
    assert "LayerNorm(x + dropout(Sublayer(x)))" in text
    assert text.count("Add & LayerNorm") >= 2 + 3  # two in the encoder layer, three in the decoder layer
    config = PRESETS["tiny"]
    assert config.norm_first is False
    model = Transformer(config)
    assert isinstance(model.encoder_norm, nn.Identity) and isinstance(model.decoder_norm, nn.Identity)
    assert model.lm_head.bias is None
    assert isinstance(model.encoder_layers[0], EncoderLayer) and isinstance(model.decoder_layers[0], DecoderLayer)
