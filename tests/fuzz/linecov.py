"""Line coverage of a target's modules over a corpus: how much of the parser the inputs reach.

    python -m tests.fuzz.linecov --target csr [--work DIR]

Replays the target's working corpus (--work/<target>/corpus, what a long run kept) and its committed
seeds, without libFuzzer, tracing lines with sys.settrace. Counted: the lines of the functions in the
modules the target covers (module-level statements run on import and are left out).
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


def _function_lines(code: CodeType) -> Iterator[int]:
    """The line numbers of every function (and class body) nested in `code`, not of `code` itself."""
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from (
                line for _, _, line in const.co_lines() if line is not None and line != const.co_firstlineno
            )
            yield from _function_lines(const)


def coverage(name: str, work: Path) -> dict[str, tuple[int, int]]:
    """Module name -> (lines reached, lines in functions) over the corpus."""
    target = load(name)
    files = {importlib.import_module(m).__file__: m for m in COVERS[name]}
    reached: set[tuple[str, int]] = set()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename not in files:
            return None
        if event == "line":
            reached.add((frame.f_code.co_filename, frame.f_lineno))
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
        code = compile(Path(filename).read_text(), filename, "exec")
        lines = set(_function_lines(code))
        result[module] = (len({line for f, line in reached if f == filename} & lines), len(lines))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=sorted(MODULES), action="append", help="default: every target")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    for name in args.target or MODULES:
        for module, (hit, total) in coverage(name, args.work).items():
            print(f"{name:16} {module:40} {hit:4}/{total:<4} lines {100 * hit / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
