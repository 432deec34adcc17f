"""Widgets built from precomputed frames: the control and the shown frame are linked in the browser."""

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from ipywidgets.embed import embed_data  # noqa: E402

from llmbook.widgets import (  # noqa: E402
    figure_to_widget,
    frame_grid,
    frame_selector,
    html_heatmap,
    html_table,
    to_widget,
)


def _link_sources(stack):
    """Sources of the jslinks that drive this stack, read from the widget state a static page embeds."""
    state = embed_data(views=[stack])["manager_state"]["state"]
    return [tuple(model["state"]["source"]) for model in state.values()
            if model["model_name"] == "LinkModel"
            and model["state"]["target"] == [f"IPY_MODEL_{stack.model_id}", "selected_index"]]


def test_frame_selector_links_control_to_stack():
    w = frame_selector(["<b>a</b>", "<b>b</b>", "<b>c</b>"], ["x", "y", "z"], description="pick", index=1)
    control, stack = w.children
    assert isinstance(stack, widgets.Stack) and stack.selected_index == 1
    assert [c.value for c in stack.children] == ["<b>a</b>", "<b>b</b>", "<b>c</b>"]
    assert _link_sources(stack) == [(f"IPY_MODEL_{control.model_id}", "index")]
    # jslink lives in the browser; its Python side is the link model, which the static page replays.
    control.index = 2
    assert control.value == "z"


def test_frame_selector_as_dropdown():
    w = frame_selector(["a", "b"], ["first", "second"], control="dropdown")
    assert isinstance(w.children[0], widgets.Dropdown)


def test_frames_become_widgets():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    image = figure_to_widget(fig)
    assert isinstance(image, widgets.Image) and image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums(), "the figure is closed so it is not shown twice"
    box = to_widget(["<i>text</i>", widgets.Label("label")])
    assert isinstance(box, widgets.VBox) and isinstance(box.children[0], widgets.HTML)
    with pytest.raises(TypeError, match="a frame must be"):
        to_widget(42)


def test_frame_grid_nests_stacks():
    frames = [[f"{r}{c}" for c in "abc"] for r in "xy"]
    w = frame_grid(frames, ["x", "y"], ["a", "b", "c"], "row", "col", row_index=1, col_index=2)
    row_control, col_control, outer = w.children  # the two controls one above the other, then the frames
    assert (row_control.index, col_control.index) == (1, 2)  # opens on frames[1][2]
    assert len(outer.children) == 2 and all(len(inner.children) == 3 for inner in outer.children)
    assert outer.children[1].children[2].value == "yc"
    assert _link_sources(outer) == [(f"IPY_MODEL_{row_control.model_id}", "index")]
    for inner in outer.children:
        assert _link_sources(inner) == [(f"IPY_MODEL_{col_control.model_id}", "index")]


def test_html_table_escapes():
    table = html_table([("<script>", 1)], header=["a", "b"])
    assert "&lt;script&gt;" in table and "<th>a</th>" in table


@pytest.mark.parametrize("kwargs, message", [
    (dict(frames=["a"], labels=["x", "y"]), "equal length"),
    (dict(frames=[], labels=[]), "non-empty"),
    (dict(frames=["a", "b"], labels=["x", "x"]), "distinct"),
    (dict(frames=["a"], labels=["x"], control="knob"), "control must be"),
    (dict(frames=["a"], labels=["x"], index=3), "index must be"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        frame_selector(**kwargs)


def test_frame_grid_shape_is_checked():
    with pytest.raises(ValueError, match="grid"):
        frame_grid([["a", "b"], ["c"]], ["x", "y"], ["p", "q"])


def test_html_heatmap_colours_by_value():
    page = html_heatmap([[0.0, 1.0], [0.5, 0.25]], ["两", "<q>"], ["a", "b"], title="attention", digits=2)
    assert page.count("<td") == 4 and "两" in page and "&lt;q&gt;" in page and "<caption>attention</caption>" in page
    assert ">1.00</tr>" in page and ">0.25</tr>" in page  # no optional </td>
    darkest, lightest = page.split("<td")[2], page.split("<td")[1]  # the cells holding 1.0 and 0.0
    assert "class=dark" in darkest and "class=" not in lightest  # white ink on dark cells (llmbook.css)
    table, scale = page.split("</table>")
    assert "background:#" in darkest and "width" not in table  # only the colour is inline
    assert 'class="llmbook-scale"><span>0</span>' in scale and "<span>1</span></div>" in scale  # vmin .. vmax bar
    assert "</table>" in html_heatmap([[1.0]], ["a"], ["b"], scale=False)[-8:]
    with pytest.raises(ValueError, match="shape"):
        html_heatmap([[1.0, 2.0]], ["a", "b"], ["c"])


def test_without_stack_a_python_callback_swaps_frames(monkeypatch):
    # ipywidgets 7 (Colab's for years) has no Stack: in a live kernel the frame is swapped by a callback instead.
    monkeypatch.setattr("llmbook.widgets.HAS_STACK", False)
    control, box = frame_selector(["<b>a</b>", "<b>b</b>"], ["x", "y"]).children
    assert isinstance(box, widgets.Box) and [c.value for c in box.children] == ["<b>a</b>"]
    control.index = 1
    assert [c.value for c in box.children] == ["<b>b</b>"]
