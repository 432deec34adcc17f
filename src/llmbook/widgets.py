"""Widgets that stay interactive on the book's static pages.

A Python callback (``interact``, ``observe``) needs a running kernel, so it does nothing on a static HTML page. These
widgets instead precompute every frame (a figure, some text, a table) and put them in a ``Stack``; the control
(slider or dropdown) is joined to the stack with ``jslink``, a link that runs in the browser. The page then behaves
the same with or without a kernel, because nothing has to be computed when the reader moves the control.

Two controls use nested stacks: the first control picks an inner stack, the second picks the frame inside every
inner stack.

ipywidgets 7 (long shipped by Colab) has no ``Stack``. There, in a live kernel, the frame is swapped by a Python
callback instead; the static page is built with ipywidgets 8 and never takes that path.

Introduced in the appendix "Counting parameters".
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets

HAS_STACK = hasattr(widgets, "Stack")


def figure_to_widget(fig: Any, dpi: int = 150) -> widgets.Image:
    """A matplotlib figure as a PNG ``Image`` widget; the figure is closed so the notebook does not show it twice.

    150 dpi is print quality, and sharp on high-density screens."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return widgets.Image(value=buffer.getvalue(), format="png")


def html_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """Rows of cells as an HTML table, every cell escaped."""
    head = ""
    if header is not None:
        head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="llmbook-table">{head}{body}</table>'


def html_heatmap(
    matrix: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "Blues",
    digits: int | None = None,
    scale: bool = True,
) -> str:
    """A matrix (e.g. attention weights, rows = queries) as an HTML table of coloured cells.

    HTML rather than an image: labels in any script (Chinese characters included) use the reader's fonts, and the
    page stays small. ``digits`` prints each value in its cell; ``scale`` adds a colour bar from vmin to vmax
    under the table.
    """
    import matplotlib
    import numpy as np

    values = np.asarray(matrix, dtype=float)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix has shape {values.shape}, labels give ({len(row_labels)}, {len(col_labels)})")
    lo = values.min() if vmin is None else vmin
    hi = values.max() if vmax is None else vmax
    scaled = np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    colormap = matplotlib.colormaps[cmap]
    # Sizes, borders and fonts live in the book's llmbook.css (classes llmbook-heatmap, dark, row): only the colour,
    # which differs from cell to cell, is written inline. A chapter page holds a hundred of these tables, so the cells
    # are written compactly: attribute values without quotes (none holds a space) and no optional </td>.
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in col_labels) + "</tr>"
    rows = []
    for label, row_values, row_scaled in zip(row_labels, values, scaled, strict=True):
        cells = []
        for value, t in zip(row_values, row_scaled, strict=True):
            color = matplotlib.colors.to_hex(colormap(0.05 + 0.95 * t))
            text = f"{value:.{digits}f}" if digits is not None else ""
            ink = " class=dark" if t > 0.6 else ""  # white text on the darker colours
            cells.append(f"<td{ink} style=background:{color} title={value:.3f}>{text}")
        rows.append(f'<tr><th class="row">{html.escape(str(label))}</th>' + "".join(cells) + "</tr>")
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    table = f'<table class="llmbook-heatmap">{caption}{head}{"".join(rows)}</table>'
    if not scale:
        return table
    stops = ",".join(matplotlib.colors.to_hex(colormap(0.05 + 0.95 * t)) for t in np.linspace(0, 1, 5))
    return (f'{table}<div class="llmbook-scale"><span>{lo:.3g}</span><span class="bar" '
            f'style="background:linear-gradient(to right,{stops})"></span><span>{hi:.3g}</span></div>')


def to_widget(frame: Any) -> widgets.Widget:
    """A frame as a widget: widgets pass through, matplotlib figures become PNG images, strings become HTML, and a
    list or tuple of frames is stacked vertically."""
    if isinstance(frame, (list, tuple)):
        return widgets.VBox([to_widget(part) for part in frame])
    if isinstance(frame, widgets.Widget):
        return frame
    if isinstance(frame, str):
        return widgets.HTML(frame)
    if hasattr(frame, "savefig"):
        return figure_to_widget(frame)
    raise TypeError(f"a frame must be a widget, a matplotlib figure or an HTML string, got {type(frame).__name__}")


def _stack(children: list[widgets.Widget], control: widgets.Widget) -> widgets.Widget:
    """A container showing child number ``control.index``, linked in the browser (or by callback on ipywidgets 7)."""
    if HAS_STACK:
        stack = widgets.Stack(children, selected_index=control.index)
        widgets.jslink((control, "index"), (stack, "selected_index"))
        return stack
    box = widgets.Box([children[control.index]])
    control.observe(lambda change: setattr(box, "children", [children[change["new"]]]), names="index")
    return box


def _control(labels: Sequence[str], description: str, control: str, index: int) -> widgets.Widget:
    if control not in ("slider", "dropdown"):
        raise ValueError(f"control must be 'slider' or 'dropdown', got {control!r}")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be distinct: each one names a frame")
    if not 0 <= index < len(labels):
        raise ValueError(f"index must be between 0 and {len(labels) - 1}, got {index}")
    options = [str(label) for label in labels]
    style = {"description_width": "initial"}
    if control == "slider":
        layout = widgets.Layout(width="min(640px, 100%)")
        return widgets.SelectionSlider(options=options, index=index, description=description, style=style,
                                       layout=layout, continuous_update=True)
    return widgets.Dropdown(options=options, index=index, description=description, style=style)


def frame_selector(
    frames: Sequence[Any],
    labels: Sequence[str],
    description: str = "",
    control: str = "slider",
    index: int = 0,
) -> widgets.VBox:
    """One control (slider or dropdown) choosing among precomputed frames; works on the static page.

    ``frames[i]`` is shown when the control reads ``labels[i]``.
    """
    if len(frames) != len(labels) or not frames:
        raise ValueError(
            f"frames and labels must be non-empty and of equal length, got {len(frames)} and {len(labels)}")
    selector = _control(labels, description, control, index)
    return widgets.VBox([selector, _stack([to_widget(f) for f in frames], selector)])


def frame_grid(
    frames: Sequence[Sequence[Any]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    row_description: str = "",
    col_description: str = "",
    row_control: str = "slider",
    col_control: str = "slider",
    row_index: int = 0,
    col_index: int = 0,
) -> widgets.VBox:
    """Two controls choosing ``frames[row][col]`` (e.g. layer x head) through nested stacks; works on the static
    page. The grid opens on ``frames[row_index][col_index]``; the controls sit one above the other."""
    if len(frames) != len(row_labels) or any(len(row) != len(col_labels) for row in frames):
        raise ValueError(
            f"frames must be a {len(row_labels)} x {len(col_labels)} grid (row_labels x col_labels)"
        )
    row_selector = _control(row_labels, row_description, row_control, row_index)
    col_selector = _control(col_labels, col_description, col_control, col_index)
    inner = [_stack([to_widget(f) for f in row], col_selector) for row in frames]
    return widgets.VBox([row_selector, col_selector, _stack(inner, row_selector)])
