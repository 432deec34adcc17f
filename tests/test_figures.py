"""The attention grid: one map per layer and head, labelled by layer and head, from a model's attention weights."""

from __future__ import annotations

import pytest
import torch

from llmbook.figures import attention_grid
from llmbook.gpt import GPT, PRESETS


def test_attention_grid_labels_every_layer_and_head():
    model = GPT(PRESETS["tiny"]).eval()
    with torch.no_grad():
        weights = model.attention_weights(torch.arange(5)[None])  # 2 x (1, 4, 5, 5)
    figure = attention_grid(weights, "tiny GPT", tokens=list("abcde"))
    axes = figure.axes
    assert len(axes) == 2 * 4
    assert [ax.get_title() for ax in axes[:4]] == ["head 1", "head 2", "head 3", "head 4"]
    assert [axes[i].get_ylabel() for i in (0, 4)] == ["layer 1", "layer 2"]
    assert [t.get_text() for t in axes[4].get_xticklabels()] == list("abcde")
    image = axes[5].images[0]
    assert image.get_clim() == (0, 1)  # one scale for every map
    assert torch.allclose(torch.tensor(image.get_array()), weights[1][0, 1])


def test_attention_grid_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"attention must have shape \(L, H, T, T\)"):
        attention_grid(torch.rand(2, 3, 4), "bad")
    with pytest.raises(ValueError, match="one label per position, 4"):
        attention_grid(torch.rand(1, 2, 4, 4), "bad", tokens=["a"])
