"""Execute notebooks in place, top to bottom in a fresh kernel, and store them so that a re-run changes nothing.

    python tools/execute_notebooks.py chapters/01_transformer.ipynb ...      (`make execute` runs it on every notebook)

What makes a stored notebook churn, and what this does about it:
- widget model ids are random (uuid4) at every run: they are renamed to ids derived from the notebook's name and the
  model's position in the widget state (models are created in the same order on every run);
- nbclient records execution timestamps in every cell's metadata: they are not recorded;
- the kernel splits a cell's printing into stream outputs as its timing happens to fall: they are merged;
- the widget state is taken from ipywidgets itself, without the default values of layout and style models, and
  models that no displayed widget is connected to are left out: the page carries only what it shows;
- PNG figures (inline and inside Image widgets) are stored as 256-colour palette PNGs, a third of the size of
  matplotlib's RGBA files for the same picture.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# The widget state, with the default values left out of the layout and style models (half of all models, whose
# every attribute is usually a default). Other models keep every attribute: the page's widget manager failed to
# create nested Stack views from states without their defaults.
STATE_CELL = """\
import json as _json, ipywidgets as _widgets
_full = _widgets.Widget.get_manager_state()
_lean = _widgets.Widget.get_manager_state(drop_defaults=True)["state"]
for _id, _model in _full["state"].items():
    if _model["model_name"] == "LayoutModel" or _model["model_name"].endswith("StyleModel"):
        _model["state"] = {**{k: v for k, v in _model["state"].items() if k.startswith("_")}, **_lean[_id]["state"]}
print(_json.dumps(_full))"""
REFERENCE = re.compile(r"IPY_MODEL_([0-9a-f]{32})")


def compact_png(data: bytes) -> bytes:
    """The same picture as a 256-colour palette PNG, when that is smaller (it is for every matplotlib figure)."""
    image = Image.open(io.BytesIO(data))
    method = Image.Quantize.FASTOCTREE if image.mode == "RGBA" else Image.Quantize.MEDIANCUT
    palette = image.quantize(colors=256, method=method)
    buffer = io.BytesIO()
    palette.save(buffer, format="png", optimize=True)
    return buffer.getvalue() if buffer.tell() < len(data) else data


def merge_streams(outputs: list) -> list:
    """Consecutive stream outputs of one name as one: how the kernel splits a cell's printing depends on timing."""
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous["name"] == output["name"]):
            previous["text"] += output["text"]
        else:
            merged.append(output)
    return merged


def _references(model: dict) -> set[str]:
    return set(REFERENCE.findall(json.dumps(model["state"])))


def connected_models(state: dict, shown: set[str]) -> dict:
    """The models connected (by references either way) to a displayed one, in their original order."""
    neighbours: dict[str, set[str]] = {model_id: set() for model_id in state}
    for model_id, model in state.items():
        for other in _references(model) & set(state):
            neighbours[model_id].add(other)
            neighbours[other].add(model_id)
    keep, todo = set(), [m for m in shown if m in state]
    while todo:
        model_id = todo.pop()
        if model_id not in keep:
            keep.add(model_id)
            todo.extend(neighbours[model_id] - keep)
    return {model_id: model for model_id, model in state.items() if model_id in keep}


def store_widgets(nb: nbformat.NotebookNode, manager_state: dict, name: str) -> None:
    """Put the pruned, compacted widget state in the metadata and give every model a deterministic id."""
    shown = {o["data"][WIDGET_VIEW]["model_id"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if WIDGET_VIEW in o.get("data", {})}
    state = connected_models(manager_state["state"], shown)
    for model in state.values():
        for buffer in model.get("buffers", []):
            if model["model_name"] == "ImageModel" and model["state"].get("format", "png") == "png":
                buffer["data"] = base64.b64encode(compact_png(base64.b64decode(buffer["data"]))).decode("ascii")
    nb.metadata.pop("widgets", None)
    if state:
        nb.metadata["widgets"] = {WIDGET_STATE: {**manager_state, "state": state}}
    renames = {model_id: hashlib.sha256(f"{name}:{i}".encode()).hexdigest()[:32] for i, model_id in enumerate(state)}
    missing = shown - set(state)
    if missing:
        raise RuntimeError(f"{name}: {len(missing)} displayed widget(s) missing from the widget state")
    text = json.dumps(nb)
    for old, new in renames.items():
        text = text.replace(old, new)
    nb.clear()
    nb.update(nbformat.from_dict(json.loads(text)))


def execute(path: Path, timeout: int) -> float:
    # The book stores the chapters' CPU scale (what CI checks), also when this machine has a GPU.
    os.environ.setdefault("LLMBOOK_DEVICE", "cpu")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(STATE_CELL))
    tic = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            store_widget_state=False, resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    seconds = time.perf_counter() - tic
    state_cell = nb.cells.pop()
    manager_state = json.loads("".join(o["text"] for o in state_cell.outputs if o.get("name") == "stdout"))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                png = compact_png(base64.b64decode(output["data"]["image/png"]))
                output["data"]["image/png"] = base64.b64encode(png).decode("ascii")
    store_widgets(nb, manager_state, path.stem)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed for one cell")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        print(f"executing {path}", flush=True)
        print(f"  {execute(path, args.timeout):.0f} s wall, {path.stat().st_size / 1e6:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
