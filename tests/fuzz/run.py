"""Run a fuzz target under atheris (libFuzzer, coverage-guided), or every target one after the other.

    python -m tests.fuzz.run --list
    python -m tests.fuzz.run --target csr --seconds 600        # a long run; the corpus grows in --work
    python -m tests.fuzz.run --target csr --runs 3000          # what CI does (tests/fuzz/test_fuzz.py)
    python -m tests.fuzz.run --all --seconds 120               # each target in turn, a summary at the end
    python -m tests.fuzz.run --target csr crash-1234abcd       # replay inputs (a crash file, say)

The working corpus and any crash inputs live under --work/<target>/ (default ~/.cache/kubespiffe/fuzz),
never in the repository; the committed seeds in tests/fuzz/corpus/<target>/ are read, not written.
Coverage feedback comes from kubespiffe's and PyJWT's Python code (instrumented on import); the C and
Rust underneath (json, cryptography) is not instrumented but is exercised all the same.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import atheris  # type: ignore[import-untyped]  # no stubs; three calls used here

from tests.fuzz.targets import CORPUS, MODULES, load

INSTRUMENTED = ["kubespiffe", "jwt"]
DEFAULT_WORK = Path.home() / ".cache" / "kubespiffe" / "fuzz"
_STATS = re.compile(rb"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def _dictionary_entry(token: bytes) -> str:
    """One libFuzzer dictionary line: the token quoted, with \\, " and non-printables escaped."""
    body = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'\\"' else f"\\x{b:02x}" for b in token)
    return f'"{body}"'


def fuzz(
    name: str, work: Path, runs: int | None, seconds: int | None, timeout: int, seed: int, inputs: list[str]
) -> None:
    """Fuzz one target in this process (atheris can run only one per process); exits with libFuzzer."""
    with atheris.instrument_imports(include=INSTRUMENTED):
        target = load(name)
    home = work / name
    corpus, artifacts = home / "corpus", home / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [f"fuzz-{name}", f"-max_len={target.max_len}", f"-timeout={timeout}", "-rss_limit_mb=2048"]
    argv += [f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-len_control=0"]
    if target.dictionary:
        dictionary = home / "dictionary"
        dictionary.write_text("".join(_dictionary_entry(t) + "\n" for t in target.dictionary))
        argv.append(f"-dict={dictionary}")
    if seed:
        argv.append(f"-seed={seed}")
    if runs is not None:
        argv.append(f"-runs={runs}")
    if seconds is not None:
        argv.append(f"-max_total_time={seconds}")
    # libFuzzer writes new inputs to the first directory only: the seeds stay as committed.
    argv += inputs or [str(corpus), str(CORPUS / name)]
    atheris.Setup(argv, target.run)
    atheris.Fuzz()


def fuzz_all(work: Path, runs: int | None, seconds: int | None, timeout: int) -> int:
    """Each target in a process of its own; prints executions, coverage and corpus size per target."""
    failed = []
    print(f"{'target':16} {'rc':>3} {'inputs':>9} {'seconds':>8} {'cov':>6} {'ft':>6} {'corpus':>7}")
    for name in MODULES:
        command = [sys.executable, "-m", "tests.fuzz.run", "--target", name, "--work", str(work)]
        command += ["--timeout", str(timeout)]
        command += ["--runs", str(runs)] if runs is not None else ["--seconds", str(seconds)]
        started = time.monotonic()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        elapsed = time.monotonic() - started
        (work / name / "last-run.log").write_bytes(done.stdout)  # atheris prints tracebacks to stdout
        stats = _STATS.findall(done.stdout)
        executed, cov, ft, corp = (s.decode() for s in stats[-1]) if stats else ("?",) * 4
        print(f"{name:16} {done.returncode:>3} {executed:>9} {elapsed:>8.1f} {cov:>6} {ft:>6} {corp:>7}")
        if done.returncode:
            failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)} (logs and crash inputs under {work}/<target>/)")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", choices=sorted(MODULES))
    which.add_argument("--all", action="store_true", help="every target, each in its own process")
    which.add_argument("--list", action="store_true")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--runs", type=int, help="stop after this many inputs")
    budget.add_argument("--seconds", type=int, help="stop after this long")
    parser.add_argument("--timeout", type=int, default=2, help="seconds one input may take (a hang)")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer's random seed (0: a new one each run)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="corpus and crash inputs go here")
    parser.add_argument("inputs", nargs="*", help="replay these files (or fuzz these corpus directories)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(MODULES))
        return 0
    if args.runs is None and args.seconds is None and not args.inputs:
        parser.error("give --runs or --seconds (or input files to replay)")
    if args.all:
        return fuzz_all(args.work, args.runs, args.seconds, args.timeout)
    fuzz(args.target, args.work, args.runs, args.seconds, args.timeout, args.seed, args.inputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
