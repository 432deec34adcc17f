"""Measure how much each notebook cell's printed results move across machines' numerics and seeds.

    python tools/measure_spread.py run --variant 1-thread --env OMP_NUM_THREADS=1 --out /tmp/spread chapters/*.ipynb
    python tools/measure_spread.py run --variant seed-1 --seed 1 --out /tmp/spread chapters/*.ipynb
    python tools/measure_spread.py report --out /tmp/spread chapters/*.ipynb

``run`` executes copies of the notebooks (the stored files are not touched) under one setting: environment variables
for the kernel (``ATEN_CPU_CAPABILITY=default`` or ``avx2`` emulates another CPU's vector instructions,
``OMP_NUM_THREADS`` another thread count) or another training seed (the chapter's ``SEED = 0`` line in its
hyperparameter cell is replaced).

``report`` compares every variant with the stored outputs, cell by cell: how far each printed number moved beyond
last-digit rounding (tests/nbcheck.py's ``number_movements``), which words changed, whether the cell passes the
portable check under every variant, and a proposed ``# check:`` spec of 1.5 times the largest movement; with
``--write`` it writes the proposals into the notebooks (to review with ``git diff``: a cell whose lines or words
differ needs a redesign, not a tolerance). The tolerances in the chapters come from these reports.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nbcheck import (  # noqa: E402
    Tolerance,
    compare_cell,
    number_movements,
    read_sanitizers,
    sanitize,
    text_outputs,
)

SEED_LINE = re.compile(r"^SEED = 0\b", re.M)


def run(paths: list[Path], variant: str, env: list[str], seed: int | None, out: Path) -> None:
    for item in env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    (out / variant).mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if seed is not None:
            cells = [c for c in nb.cells if c.cell_type == "code" and SEED_LINE.search(c.source)]
            if len(cells) != 1:
                raise SystemExit(f"{path}: expected one cell with a 'SEED = 0' line, found {len(cells)}")
            cells[0].source = SEED_LINE.sub(f"SEED = {seed}", cells[0].source)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = []
        print(f"{variant}: executing {path}", flush=True)
        NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True, record_timing=False,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, out / variant / path.name)


def _nice(x: float) -> float:
    """x rounded up to one significant digit (0.0213 -> 0.03)."""
    exponent = math.floor(math.log10(x))
    return math.ceil(x / 10**exponent) * 10**exponent


def propose(moves: list[tuple[str, float, float]], margin: float = 1.5) -> str:
    """A '# check:' spec covering ``margin`` times every movement: pct and ints from their largest movement; for the
    other numbers abs or rel, whichever allows less in total relative to the numbers' sizes."""
    spec = []
    floats = [(size, excess * margin) for kind, size, excess in moves if kind == "float"]
    if floats:
        by_abs = max(e for _, e in floats)
        by_rel = max(e / s if s else math.inf for s, e in floats)
        sizes = [s for s, _ in floats if s]
        if by_rel == math.inf or sum(by_abs / s for s in sizes) <= by_rel * len(sizes):
            spec.append(f"abs={_nice(by_abs):g}")
        else:
            spec.append(f"rel={_nice(by_rel):g}")
    for kind, key in (("pct", "pct"), ("int", "ints")):
        largest = max((excess for k, _, excess in moves if k == kind), default=0.0)
        if largest:
            spec.append(f"{key}={_nice(largest * margin):g}" if key == "pct" else f"ints={math.ceil(largest * margin)}")
    return " ".join(spec)


REASON = "(trained: 1.5 x the largest movement measured across CPUs, threads and seeds)"


def write_directive(cell: nbformat.NotebookNode, spec: str) -> None:
    """Set the cell's '# check:' line to ``spec`` (replacing the one it has, or as its first line)."""
    lines = cell.source.split("\n")
    directive = f"# check: {spec} {REASON}"
    at = [i for i, line in enumerate(lines) if line.startswith("# check: ")]
    if at:
        lines[at[0]] = directive
    else:
        lines.insert(0, directive)
    cell.source = "\n".join(lines)


def report(paths: list[Path], out: Path, write: bool = False) -> int:
    sanitizers = read_sanitizers()
    variants = sorted(p.name for p in out.iterdir() if p.is_dir())
    failing = 0
    for path in paths:
        stored = nbformat.read(path, as_version=4)
        runs = {v: nbformat.read(out / v / path.name, as_version=4) for v in variants if (out / v / path.name).exists()}
        print(f"\n## {path} ({', '.join(runs)})")
        for index, cell in enumerate(stored.cells):
            if cell.cell_type != "code":
                continue
            lines, all_moves, words_differ = [], [], False
            for variant, nb in runs.items():
                problems = compare_cell(cell, nb.cells[index], sanitizers)
                old, new = text_outputs(cell), text_outputs(nb.cells[index])
                moves: list[tuple[str, float, float]] = []
                others: list[str] = []
                for stream in old.keys() & new.keys():
                    m, o = number_movements(sanitize(old[stream], sanitizers), sanitize(new[stream], sanitizers))
                    moves, others = moves + m, others + o
                all_moves += moves
                words_differ |= bool(others)
                if moves or others or problems:
                    largest = {k: max(e for kind, _, e in moves if kind == k) for k in {kind for kind, _, _ in moves}}
                    lines.append(f"    {variant:<14} {'FAILS' if problems else 'passes'}; moved "
                                 + (", ".join(f"{k} {v:.3g}" for k, v in sorted(largest.items())) or "nothing")
                                 + "".join(f"\n        other: {o}" for o in others[:3]))
                failing += bool(problems)
            if lines:
                proposal = propose(all_moves) + (" words=any" if words_differ else "")
                if write and proposal.strip() and not Tolerance.parse(cell.source).ignore_output:
                    write_directive(cell, proposal.strip())
                print(f"  cell {cell.execution_count}: declares {Tolerance.parse(cell.source)}; "
                      f"proposed: {proposal.strip() or '-'}")
                print("\n".join(lines))
        if write:
            nbformat.write(stored, path)
    print(f"\n{failing} cell runs fail the portable check")
    return 1 if failing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder of executed copies, a subfolder each variant")
    parser.add_argument("--variant", help="name of this run's setting (run)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the kernel (run)")
    parser.add_argument("--seed", type=int, help="replace the chapter's SEED = 0 (run)")
    parser.add_argument("--write", action="store_true",
                        help="write each proposed '# check:' line into its cell (report; review with git diff)")
    args = parser.parse_args()
    if args.command == "run":
        if not args.variant:
            parser.error("run needs --variant")
        run(args.notebooks, args.variant, args.env, args.seed, args.out)
        return 0
    return report(args.notebooks, args.out, args.write)


if __name__ == "__main__":
    sys.exit(main())
