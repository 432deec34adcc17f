"""The portable notebook check (tests/nbcheck.py) passes what differs only within tolerance, and fails otherwise."""

import json
from pathlib import Path

import pytest

from nbcheck import Tolerance, compare_cell, compare_text, read_sanitizers

pytest_plugins = ["pytester"]


def differ(stored: str, new: str, directive: str = "") -> list[str]:
    return compare_text(stored, new, Tolerance.parse(directive))


def test_exact_where_exact():
    line = "116,534,784 parameters, shape (2, 3, 5, 4): True"
    assert not differ(line, line)
    assert differ("116,534,784 parameters", "116,534,785 parameters")  # a count moved by 1
    assert differ("116,534,784 parameters", "116,534,785 parameters", "# check: abs=1 rel=1 pct=1 (not for integers)")
    assert differ("shape (2, 3, 5, 4)", "shape (2, 3, 5, 5)")
    assert differ("M_1 orthogonal: True", "M_1 orthogonal: False")
    assert differ("tokens: <pad> <bos> 零 一", "tokens: <pad> <bos> 一 零")
    assert differ("a\nb", "a")  # a line missing


def test_floats_get_one_unit_of_their_last_digit():
    assert not differ("spread over p = 9.2e-06", "spread over p = 9.3e-06")  # the AVX2 machine's last digit
    assert differ("spread over p = 9.2e-06", "spread over p = 9.4e-06")
    assert not differ("norm 5.657", "norm 5.658")
    assert differ("norm 5.657", "norm 5.660")
    assert not differ("loss -0.28 +0.15", "loss -0.27 +0.16")


def test_whitespace_runs_from_padding_are_ignored():
    assert not differ("greedy   9.5% beam", "greedy  10.5% beam", "# check: pct=1 (training)")


def test_declared_tolerances():
    assert not differ("validation loss 4.621", "validation loss 4.671", "# check: abs=0.05 (training)")
    assert differ("validation loss 4.621", "validation loss 4.681", "# check: abs=0.05 (training)")
    assert not differ("perplexity 101.6", "perplexity 106.0", "# check: rel=0.05 (training)")
    assert differ("perplexity 101.6", "perplexity 108.0", "# check: rel=0.05 (training)")
    # an accuracy edited by 5 points fails a 2-point tolerance; the float tolerance does not apply to percentages
    assert not differ("exact match 96.0%", "exact match 94.2%", "# check: pct=2 (training)")
    assert differ("exact match 96.0%", "exact match 91.0%", "# check: pct=2 (training)")
    assert differ("exact match 96.0%", "exact match 95.0%", "# check: abs=5 (training)")
    # integers are exact unless the cell declares ints=K
    assert differ("20 errors", "21 errors", "# check: abs=5 pct=5 (training)")
    assert not differ("20 errors", "23 errors", "# check: ints=3 (training)")
    assert differ("20 errors", "24 errors", "# check: ints=3 (training)")
    assert differ("96.0%", "96.0", "# check: pct=5 (training)")
    # words=any: a trained model's words may differ, the numbers and the shape of each line may not
    assert not differ("step 150: 72.5% 八亿五千五百万", "step 150: 73.0% 八亿五千万", "# check: pct=1 words=any (x)")
    assert differ("step 150: 72.5% 八亿五千五百万", "step 150: 75.0% 八亿五千万", "# check: pct=1 words=any (model)")
    assert differ("step 150: 72.5% 八亿 五千万", "step 150: 72.5% 八亿五千万", "# check: pct=1 words=any (model)")


@pytest.mark.parametrize("directive, message", [
    ("# check: abs=0.1", "must say why"),
    ("# check: tol=0.1 (why)", "understands abs=X"),
    ("# check: words=some (why)", "understands abs=X"),
    ("# check: abs=-1 (why)", "must be >= 0"),
    ("# check: ints=1.5 (why)", "ints must be a whole number"),
    ("# check: abs=0.1 (a)\n# check: pct=1 (b)", "at most one"),
])
def test_bad_directives_are_errors(directive, message):
    with pytest.raises(ValueError, match=message):
        Tolerance.parse(directive)


def cell(source: str, text: str, name: str = "stdout") -> dict:
    return {"cell_type": "code", "source": source, "outputs": [{"output_type": "stream", "name": name, "text": text}]}


def test_cells_compare_streams_after_sanitizing():
    sanitizers = read_sanitizers()
    assert not compare_cell(cell("", "took 12.3 s wall\n"), cell("", "took 9.8 s wall\n"), sanitizers)
    assert compare_cell(cell("", "accuracy 0.5\n"), cell("", "accuracy 0.5\n", "stderr"), sanitizers)
    assert not compare_cell(cell("# check: ignore-output (timings)", "1\n"), cell("", "2\n"), sanitizers)
    raised = {"cell_type": "code", "source": "", "outputs": [
        {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}]}
    assert compare_cell(cell("# check: ignore-output (timings)", "1\n"), raised, sanitizers) == [
        "the cell raised ValueError: bad"]


def notebook(stored_output: str, directive: str) -> str:
    source = directive + '\nprint(f"{0.1 + 0.2:.2f}")'
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "c1", "execution_count": 1, "metadata": {}, "source": source,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": stored_output}]}]})


def test_the_plugin_executes_and_fails_a_result_moved_past_its_tolerance(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    pytester.makefile(".ipynb", within=notebook("0.31\n", "# check: abs=0.02 (demo)"),
                      moved=notebook("0.36\n", "# check: abs=0.02 (demo)"))
    result = pytester.runpytest_subprocess("-p", "nbcheck", "--nbcheck", "within.ipynb", "moved.ipynb")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*0.30 where 0.36 was stored (allowed difference 0.03)*"])
