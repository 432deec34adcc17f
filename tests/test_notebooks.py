"""Every notebook is stored executed, top to bottom, with its outputs and widget state, starts with the setup cell,
and passes what the portable check (tests/nbcheck.py) needs of it."""

import hashlib
import unicodedata

import pytest
import yaml

from nbcheck import Tolerance
from notebook_checks import (
    NBVAL_TAGS,
    NOTEBOOKS,
    ROOT,
    WIDGET_STATE,
    WIDGET_VIEW,
    code_cells,
    coverage,
    expected_setup_cell,
    load,
    source,
)

IDS = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]


def test_there_are_notebooks():
    assert (ROOT / "book" / "appendix_parameters.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_starts_with_the_setup_cell(path):
    cells = code_cells(load(path))
    assert source(cells[0]) == expected_setup_cell(), "the first code cell must be the standard setup cell"
    assert sum("import llmbook" in source(c) and "%pip install" in source(c) for c in cells) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_executed_top_to_bottom_without_errors(path):
    cells = code_cells(load(path))
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"stored error output: {errors[0].get('ename')}"
    assert any(c["outputs"] for c in cells), "the notebook is stored without outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_widget_state_is_stored(path):
    nb = load(path)
    shown = {o["data"][WIDGET_VIEW]["model_id"] for c in code_cells(nb) for o in c["outputs"]
             if WIDGET_VIEW in o.get("data", {})}
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    missing = shown - set(state)
    assert not missing, f"{len(missing)} displayed widget(s) have no stored state: the static page cannot show them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_check_directives_are_valid_and_say_why(path):
    for cell in code_cells(load(path)):
        assert not NBVAL_TAGS & set(cell.get("metadata", {}).get("tags", [])), (
            "nbval tags escape nothing: write '# check: ignore-output (why)' in the cell\n" + source(cell)[:200])
        Tolerance.parse(source(cell))  # raises on an unknown key, a bad value or a missing reason


def test_stored_widget_ids_are_deterministic():
    """tools/execute_notebooks.py names widget models by notebook and position, so a re-run rewrites no id."""
    for path in NOTEBOOKS:
        state = load(path)["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        expected = [hashlib.sha256(f"{path.stem}:{i}".encode()).hexdigest()[:32] for i in range(len(state))]
        # (the file lists the models in key order: compare the sets)
        assert set(state) == set(expected), f"{path.name}: widget ids are not deterministic: run `make execute`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebooks_stay_under_1_mb(path):  # the built pages are checked in tests/browser
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size / 1e6:.2f} MB"


# The page's code column holds about 80 characters at a 1,280-pixel window: longer lines are cut off (they scroll).
# The chapters listed here keep their code and printed text within it (a Chinese character is two columns wide in
# a monospaced font); the setup cell (a URL) is exempt.
FITS_THE_PAGE = ["chapters/01_transformer.ipynb", "chapters/04_gpt2.ipynb", "chapters/05_scaling_laws.ipynb",
                 "chapters/06_gpt3.ipynb", "chapters/07_ollama.ipynb",
                 "chapters/08_games.ipynb"]
PAGE_WIDTH = 80


def display_width(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


@pytest.mark.parametrize("name", FITS_THE_PAGE)
def test_code_and_printed_text_fit_the_page(name):
    cells = [c for c in load(ROOT / name)["cells"] if c["cell_type"] == "code"][1:]
    wide = []
    for cell in cells:
        lines = "".join(cell["source"]).splitlines()
        for output in cell.get("outputs", []):
            lines += "".join(output.get("text", "")).splitlines()
        wide += [line for line in lines if display_width(line) > PAGE_WIDTH]
    assert not wide, f"{len(wide)} lines wider than {PAGE_WIDTH} characters, e.g. {wide[:3]}"


def test_the_check_compares_at_least_80_percent_of_cells_with_output():
    checked = total = 0
    for path in NOTEBOOKS:
        c, n = coverage(load(path))
        checked, total = checked + c, total + n
    assert total > 0
    assert checked / total >= 0.8, f"the check compares the text of only {checked}/{total} cells with output"


def test_every_notebook_is_in_the_table_of_contents():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {entry["file"] for part in toc["parts"] for entry in part["chapters"]}
    for path in NOTEBOOKS:
        assert str(path.relative_to(ROOT).with_suffix("")) in files
