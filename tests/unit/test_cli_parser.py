"""`kubespiffe <subcommand>` builds that subcommand's parser only, and parses exactly as the full parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from kubespiffe.cli import main as cli

AGENT = ["agent", "--server", "a:1", "--token-file", "t", "--bundle-file", "b", "--socket", "s"]
COMMAND_LINES = [
    [],
    ["-h"],
    ["agnt"],
    ["-h", "agent"],
    ["agent"],
    ["agent", "--help"],
    ["agent", "--server", "a:1"],
    AGENT,
    [*AGENT, "--jwt-cache-size", "x"],
    [*AGENT, "--bogus"],  # left to the top parser: its usage names every subcommand
    [*AGENT, "extra"],
    [*AGENT, "--write-dir", "/d", "--jwt-audience", "aud", "--socket-mode", "0600"],
    ["probe"],
    ["probe", "--wait", "-1"],
    ["probe", "--help"],
    ["fetch"],
    ["fetch", "x509", "--help"],
    ["fetch", "jwt", "--socket", "unix:///s"],
    ["validate", "jwt", "--audience", "a"],
    ["ca", "show", "--help"],
    ["bundle", "show", "--format", "x"],
    ["dev", "up", "--help"],
]


def outcome(
    parse: Callable[[list[str]], argparse.Namespace], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[object, str, str]:
    """The namespace parsed, or the exit code; and what was printed."""
    try:
        result: object = vars(parse(argv))
    except SystemExit as exited:
        result = exited.code
    out, err = capsys.readouterr()
    return result, out, err


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=" ".join)
def test_the_parse_is_the_full_parsers(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    full = outcome(cli.build_parser().parse_args, argv, capsys)
    assert outcome(cli.parse_args, argv, capsys) == full


def test_the_agent_builds_its_parser_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_built(commands: cli.Commands) -> None:
        raise AssertionError("another subcommand's parser was built")

    others = {name: not_built for name in cli.SUBCOMMANDS if name != "agent"}
    monkeypatch.setattr(cli, "SUBCOMMANDS", {**cli.SUBCOMMANDS, **others})
    args = cli.parse_args(AGENT)
    assert args.func is cli.cmd_agent
    assert args.server == "a:1"


def test_the_full_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage == "usage: kubespiffe [-h] {fetch,validate,probe,agent,ca,bundle,dev} ..."
