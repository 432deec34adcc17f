"""Portable notebook checks: a pytest plugin that re-executes each notebook once and compares its text outputs with
the stored ones, token by token, so that `make test` passes on any CPU, thread count and device.

    pytest -p nbcheck --nbcheck chapters/*.ipynb      (tests/ on the path; the Makefile does this)

Seeded training in PyTorch is reproducible bit for bit only on the same vector instructions and thread count, so an
exact comparison of a chapter's outputs fails on a reader's machine. Here the text of stdout, stderr and plain-text
results is split into numbers and words:
- words (everything that is not a number, whitespace runs ignored) must be equal: counts of lines, labels, booleans,
  strings and generated text stay exact;
- an integer must be equal, unless the cell declares ``ints=K`` (then within K);
- with ``words=any`` (a cell that prints what a trained model wrote, e.g. translations) the words may differ, but
  each line must still hold as many tokens, and its numbers are compared as above;
- a decimal number (``4.62``, ``9.2e-06``, ``96.0%``) may differ by one unit of its last printed digit (rounding on
  another CPU), plus the tolerance its cell declares: ``abs=`` / ``rel=`` for plain numbers, ``pct=`` (in points)
  for percentages.
A cell declares its tolerance beside the code that prints it, in one comment line that says why::

    # check: abs=0.05 pct=2 ints=3  (training: spread over CPUs, threads and seeds is in book/running.md)
    # check: pct=3 words=any  (translations by the trained model)
    # check: ignore-output  (wall-clock timings)

Noise that no tolerance describes (timings, memory addresses, progress-bar rates) is replaced by the regex pairs of
tests/notebook_sanitize.cfg before the comparison.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

SANITIZE_FILE = Path(__file__).with_name("notebook_sanitize.cfg")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CELL_TIMEOUT_S = 900
DIRECTIVE = re.compile(r"^# check: (.*)$", re.M)
# A number: digits with optional thousands separators, decimals, exponent and percent sign. A leading sign belongs to
# the number only where it cannot be a word's hyphen ("M_1", "-0.28" and "twenty-one" all tokenize sensibly).
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?%?|(?<=\w)\d+(?:\.\d+)?")
TOKEN = re.compile(NUMBER.pattern + r"|[^\s\d]+|\d", re.M)


@dataclass(frozen=True)
class Tolerance:
    """What a cell's ``# check:`` line allows on top of last-digit rounding. See the module docstring."""

    abs: float = 0.0
    rel: float = 0.0
    pct: float = 0.0
    ints: int = 0
    any_words: bool = False
    ignore_output: bool = False
    reason: str = ""

    @classmethod
    def parse(cls, source: str) -> Tolerance:
        lines = DIRECTIVE.findall(source)
        if not lines:
            return cls()
        if len(lines) > 1:
            raise ValueError(f"a cell has at most one '# check:' line, found {len(lines)}")
        spec, _, reason = lines[0].partition("(")
        if not reason.strip(") ").strip():
            raise ValueError(f"'# check: {lines[0]}' must say why in parentheses, e.g. '# check: abs=0.05 (training)'")
        values: dict[str, float | bool] = {}
        for item in spec.split():
            key, eq, value = item.partition("=")
            if item == "ignore-output":
                values["ignore_output"] = True
            elif item == "words=any":
                values["any_words"] = True
            elif eq and key in ("abs", "rel", "pct", "ints"):
                try:
                    number = int(value) if key == "ints" else float(value)
                except ValueError:
                    raise ValueError(f"'# check:' {key} must be a {'whole ' if key == 'ints' else ''}number, "
                                     f"got {value!r}") from None
                if not number >= 0:
                    raise ValueError(f"'# check:' {key} must be >= 0, got {value!r}")
                values[key] = number
            else:
                raise ValueError("'# check:' understands abs=X, rel=X, pct=X, ints=K, words=any and ignore-output, "
                                 f"got {item!r}")
        return cls(**values, reason=reason.strip(") ").strip())  # type: ignore[arg-type]


def read_sanitizers(path: Path = SANITIZE_FILE) -> list[tuple[re.Pattern[str], str]]:
    """The (regex, replacement) pairs of a sanitize file: '[comment]' lines, then 'regex: ' and 'replace: ' lines."""
    pairs, regex = [], None
    for line in path.read_text().splitlines():
        if line.startswith("regex: "):
            regex = re.compile(line.removeprefix("regex: "))
        elif line.startswith("replace: "):
            if regex is None:
                raise ValueError(f"{path}: 'replace:' without a 'regex:' before it")
            pairs.append((regex, line.removeprefix("replace: ")))
            regex = None
    return pairs


def sanitize(text: str, sanitizers: list[tuple[re.Pattern[str], str]]) -> str:
    for regex, replacement in sanitizers:
        text = regex.sub(replacement, text)
    return text


def _parse_number(token: str) -> tuple[float, float, bool, bool]:
    """(value, one unit of the last printed digit, is a percentage, is an integer)."""
    percent = token.endswith("%")
    body = token.rstrip("%").replace(",", "")
    mantissa, _, exponent = body.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    unit = 10.0 ** (int(exponent or 0) - decimals)
    is_int = "." not in mantissa and not exponent
    return float(body), unit, percent, is_int


def compare_number(stored: str, new: str, tol: Tolerance) -> str | None:
    """None when ``new`` is within the tolerance of ``stored``, else what is wrong."""
    a, unit_a, pct_a, int_a = _parse_number(stored)
    b, _, pct_b, int_b = _parse_number(new)
    if pct_a != pct_b:
        return f"{new} where {stored} was stored (percent sign differs)"
    if int_a and int_b:
        allowed = float(tol.ints)
    else:
        allowed = unit_a + (tol.pct if pct_a else max(tol.abs, tol.rel * abs(a)))
    if abs(a - b) > allowed * (1 + 1e-9):
        return f"{new} where {stored} was stored (allowed difference {allowed:g})"
    return None


def compare_text(stored: str, new: str, tol: Tolerance) -> list[str]:
    """Token-by-token comparison of two outputs; returns the differences (empty when they match)."""
    problems = []
    stored_lines, new_lines = stored.strip("\n").split("\n"), new.strip("\n").split("\n")
    if len(stored_lines) != len(new_lines):
        problems.append(f"{len(new_lines)} lines where {len(stored_lines)} were stored")
    for n, (old_line, new_line) in enumerate(zip(stored_lines, new_lines, strict=False), 1):  # counts checked above
        old_tokens, new_tokens = TOKEN.findall(old_line), TOKEN.findall(new_line)
        if len(old_tokens) != len(new_tokens):
            problems.append(f"line {n}: {new_line.strip()!r} where {old_line.strip()!r} was stored")
            continue
        for old, token in zip(old_tokens, new_tokens, strict=True):
            both_numbers = NUMBER.fullmatch(old) and NUMBER.fullmatch(token)
            problem = compare_number(old, token, tol) if both_numbers else (
                None if old == token or tol.any_words else f"{token!r} where {old!r} was stored")
            if problem:
                problems.append(f"line {n}: {problem}\n    stored: {old_line.strip()}\n    new:    {new_line.strip()}")
    return problems


def text_outputs(cell: dict) -> dict[str, str]:
    """What is compared of a cell: stdout, stderr and the plain text of results that are not widgets."""
    parts: dict[str, str] = {}
    for output in cell.get("outputs", []):
        kind = output["output_type"]
        if kind == "stream":
            parts[output["name"]] = parts.get(output["name"], "") + output["text"]
        elif kind in ("execute_result", "display_data") and WIDGET_VIEW not in output["data"]:
            if "text/plain" in output["data"]:
                parts["result"] = parts.get("result", "") + output["data"]["text/plain"] + "\n"
        elif kind == "error":
            parts["error"] = f"{output['ename']}: {output['evalue']}"
    return parts


def compare_cell(stored: dict, new: dict, sanitizers: list[tuple[re.Pattern[str], str]]) -> list[str]:
    """Differences between a stored code cell and its re-execution, under the cell's declared tolerance."""
    tol = Tolerance.parse(stored["source"])
    new_parts = text_outputs(new)
    if "error" in new_parts:
        return [f"the cell raised {new_parts['error']}"]
    if tol.ignore_output:
        return []
    old_parts = text_outputs(stored)
    problems = []
    for stream in sorted(set(old_parts) | set(new_parts)):
        if stream not in new_parts or stream not in old_parts:
            problems.append(f"{stream}: {'missing' if stream not in new_parts else 'printed'}, "
                            f"where the stored cell {'has it' if stream in old_parts else 'has none'}")
            continue
        old, fresh = (sanitize(parts[stream], sanitizers) for parts in (old_parts, new_parts))
        problems += [f"{stream}, {p}" for p in compare_text(old, fresh, tol)]
    return problems


def number_movements(stored: str, new: str) -> tuple[list[tuple[str, float, float]], list[str]]:
    """How far each number of ``new`` moved from ``stored`` beyond last-digit rounding, as (kind, |stored value|,
    excess) with kind "int", "pct" or "float", and the differences no tolerance covers (words, line counts).
    Used by tools/measure_spread.py to choose tolerances from runs on other settings."""
    moves: list[tuple[str, float, float]] = []
    other = []
    stored_lines, new_lines = stored.strip("\n").split("\n"), new.strip("\n").split("\n")
    if len(stored_lines) != len(new_lines):
        other.append(f"{len(new_lines)} lines where {len(stored_lines)} were stored")
    for old_line, new_line in zip(stored_lines, new_lines, strict=False):  # counts checked above
        old_tokens, new_tokens = TOKEN.findall(old_line), TOKEN.findall(new_line)
        if len(old_tokens) != len(new_tokens):
            other.append(f"{new_line.strip()!r} where {old_line.strip()!r} was stored")
            continue
        for old, token in zip(old_tokens, new_tokens, strict=True):
            if not (NUMBER.fullmatch(old) and NUMBER.fullmatch(token)):
                if old != token:
                    other.append(f"{token!r} where {old!r} was stored: {old_line.strip()[:100]}")
                continue
            a, unit, percent, is_int = _parse_number(old)
            b, _, _, new_is_int = _parse_number(token)
            kind = "int" if is_int and new_is_int else "pct" if percent else "float"
            excess = abs(a - b) - (0.0 if kind == "int" else unit)
            if excess > 1e-12:
                moves.append((kind, abs(a), excess))
    return moves, other


# --- the pytest plugin ---------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--nbcheck", action="store_true", help="re-execute notebooks and compare their outputs")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix == ".ipynb" and parent.config.getoption("--nbcheck"):
        return NotebookFile.from_parent(parent, path=file_path)
    return None


class NotebookFile(pytest.File):
    """One notebook: executed once, top to bottom, in a fresh kernel; one test item per code cell."""

    def collect(self) -> Iterator[CellItem]:
        self.stored = nbformat.read(self.path, as_version=4)
        self._executed: nbformat.NotebookNode | None = None
        for index, cell in enumerate(self.stored.cells):
            if cell.cell_type == "code":
                number = cell.get("execution_count") or index
                yield CellItem.from_parent(self, name=f"cell {number}", index=index)

    def executed(self) -> nbformat.NotebookNode:
        if self._executed is None:
            # The stored outputs are the chapters' CPU scale: a machine with a GPU must run that scale too.
            os.environ.setdefault("LLMBOOK_DEVICE", "cpu")
            fresh = nbformat.from_dict(self.stored)
            for cell in fresh.cells:
                if cell.cell_type == "code":
                    cell.outputs = []
            client = NotebookClient(fresh, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=True,
                                    record_timing=False, resources={"metadata": {"path": str(self.path.parent)}})
            self._executed = client.execute()
        return self._executed


@dataclass
class CellFailure(Exception):
    problems: list[str] = field(default_factory=list)


class CellItem(pytest.Item):
    def __init__(self, *, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index

    def runtest(self) -> None:
        notebook = self.parent
        assert isinstance(notebook, NotebookFile)
        stored, new = notebook.stored.cells[self.index], notebook.executed().cells[self.index]
        problems = compare_cell(stored, new, read_sanitizers())
        if problems:
            raise CellFailure(problems)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CellFailure) and isinstance(self.parent, NotebookFile):
            source = self.parent.stored.cells[self.index].source
            head = "\n".join(source.splitlines()[:6])
            return f"{head}\n...\n" + "\n".join(excinfo.value.problems[:20])
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, None, str]:
        return self.path, None, f"{self.path.name}::{self.name}"

