"""Widgets built from precomputed frames: the control and the shown frame are linked in the browser."""

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from ipywidgets.widgets.widget_link import Link  # noqa: E402

from llmbook.widgets import (  # noqa: E402
    figure_to_widget, frame_grid, frame_selector, html_heatmap, html_table, to_widget,
)


def _links(stack):
    """The jslinks whose target is this stack's selected_index."""
    return [w for w in widgets.Widget.widgets.values()
            if isinstance(w, Link) and w.target == (stack, "selected_index")]


def test_frame_selector_links_control_to_stack():
    w = frame_selector(["<b>a</b>", "<b>b</b>", "<b>c</b>"], ["x", "y", "z"], description="pick", index=1)
    control, stack = w.children
    assert isinstance(stack, widgets.Stack) and stack.selected_index == 1
    assert [c.value for c in stack.children] == ["<b>a</b>", "<b>b</b>", "<b>c</b>"]
    (link,) = _links(stack)
    assert link.source == (control, "index")
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
    w = frame_grid(frames, ["x", "y"], ["a", "b", "c"], "row", "col")
    (row_control, col_control), outer = w.children[0].children, w.children[1]
    assert len(outer.children) == 2 and all(len(inner.children) == 3 for inner in outer.children)
    assert outer.children[1].children[2].value == "yc"
    assert _links(outer)[0].source == (row_control, "index")
    for inner in outer.children:
        assert _links(inner)[0].source == (col_control, "index")


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
    assert ">1.00</td>" in page and ">0.25</td>" in page
    darkest, lightest = page.split("<td")[2], page.split("<td")[1]  # the cells holding 1.0 and 0.0
    assert "color:#fff" in darkest and "color:#000" in lightest
    with pytest.raises(ValueError, match="shape"):
        html_heatmap([[1.0, 2.0]], ["a", "b"], ["c"])
