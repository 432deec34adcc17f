"""Execute chapters at a chosen scale without storing anything, and report how long each took.

    python tools/run_chapters.py --scale gpu --max-steps 2 --max-examples 300 --device cpu chapters/*.ipynb
    python tools/run_chapters.py --scale gpu chapters/*.ipynb    # on a GPU machine: the real GPU scale

The first runs the GPU scale end to end on a CPU, cut short. Each notebook runs top to bottom in a fresh kernel with
``LLMBOOK_SCALE`` (and ``LLMBOOK_MAX_STEPS``, ``LLMBOOK_MAX_EXAMPLES`` when given) set, see
``llmbook.config.chapter_hyperparameters``. ``--device cpu`` also sets ``LLMBOOK_DEVICE=cpu``. The executed copy
is written to ``--out`` (default: not written) so that its outputs can be read; the chapter files are not touched.
Cells slower than ``--slow`` seconds are listed under their notebook.
A cell that raises stops that notebook and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run(path: Path, timeout: int, out: Path | None, slow: float) -> tuple[float, str | None]:
    """Execute ``path`` in its own folder; return the seconds it took and the error, if a cell raised."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start, error = time.perf_counter(), None
    try:
        client.execute()
    except (CellExecutionError, TimeoutError) as exc:  # a cell raised, or ran past --timeout
        error = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    seconds = time.perf_counter() - start
    for i, cell in enumerate(notebook.cells):  # the slowest cells, from the kernel's own timestamps
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            cell_seconds = (_time(timing["shell.execute_reply"]) - _time(timing["iopub.execute_input"]))
            if cell_seconds > slow:
                print(f"  cell {i}: {cell_seconds:.1f} s", flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out / path.name)
    return seconds, error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--scale", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--max-steps", type=int, default=None, help="cut every step count to this (LLMBOOK_MAX_STEPS)")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="cut every example count n_* to this (LLMBOOK_MAX_EXAMPLES)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--slow", type=float, default=20.0, help="list the cells that took longer (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the executed copies")
    args = parser.parse_args()
    os.environ["LLMBOOK_SCALE"] = args.scale
    if args.max_steps is not None:
        os.environ["LLMBOOK_MAX_STEPS"] = str(args.max_steps)
    if args.max_examples is not None:
        os.environ["LLMBOOK_MAX_EXAMPLES"] = str(args.max_examples)
    if args.device == "cpu":
        os.environ["LLMBOOK_DEVICE"] = "cpu"
    failures = 0
    for path in args.notebooks:
        seconds, error = run(path, args.timeout, args.out, args.slow)
        failures += error is not None
        print(f"{path.name:<28} {seconds:7.1f} s  {'ok' if error is None else 'FAILED: ' + error}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
