"""Line coverage of a target's modules over a corpus: how much of the parser the inputs reach.

    python -m tests.fuzz.linecov --target csr [--work DIR]

Replays the target's working corpus (--work/<target>/corpus, what a long run kept) and its committed
seeds, without libFuzzer, tracing lines with sys.settrace. Counted: the lines of the functions in the
modules the target covers (module-level statements run on import and are left out), as a share of the
functions the inputs entered (how deep the parser is explored) and of the whole module (which also holds
code no parser input reaches, such as serializers and minting).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from tests.fuzz.run import DEFAULT_WORK
from tests.fuzz.targets import COVERS, MODULES, load, seeds


def _functions(code: CodeType) -> Iterator[CodeType]:
    """Every function (and class body) nested in `code`, not `code` itself."""
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield const
            yield from _functions(const)


def _lines(code: CodeType) -> set[int]:
    return {line for _, _, line in code.co_lines() if line is not None and line != code.co_firstlineno}


def coverage(name: str, work: Path) -> dict[str, tuple[int, int, int]]:
    """Module name -> (lines reached, lines in the functions entered, lines in all functions)."""
    target = load(name)
    files = {importlib.import_module(m).__file__: m for m in COVERS[name]}
    reached: set[tuple[str, int]] = set()
    entered: set[tuple[str, str, int]] = set()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename not in files:
            return None
        if event == "call":
            entered.add((code.co_filename, code.co_name, code.co_firstlineno))
        elif event == "line":
            reached.add((code.co_filename, frame.f_lineno))
        return trace

    inputs = [*sorted((work / name / "corpus").glob("*")), *seeds(name)]
    sys.settrace(trace)
    try:
        for path in inputs:
            target.run(path.read_bytes())
    finally:
        sys.settrace(None)
    result = {}
    for filename, module in files.items():
        assert filename is not None
        functions = list(_functions(compile(Path(filename).read_text(), filename, "exec")))
        every = set().union(*(_lines(f) for f in functions))
        called = set().union(
            *(_lines(f) for f in functions if (filename, f.co_name, f.co_firstlineno) in entered)
        )
        hit = {line for f, line in reached if f == filename} & every
        result[module] = (len(hit), len(called), len(every))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=sorted(MODULES), action="append", help="default: every target")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    print(f"{'target':16} {'module':34} {'reached':>7} {'of entered':>10} {'of module':>9}")
    for name in args.target or MODULES:
        for module, (hit, called, every) in coverage(name, args.work).items():
            print(f"{name:16} {module:34} {hit:7} {hit / called:10.0%} {hit / every:9.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
