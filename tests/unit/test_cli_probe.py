"""`kubespiffe probe --wait`: a number of seconds, 0 or more; anything else is a usage error saying so."""

from __future__ import annotations

import pytest

from kubespiffe.cli.main import build_parser


@pytest.mark.parametrize("value", ["-1", "nan", "abc", "", "-inf", "inf"])
def test_a_bad_wait_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["probe", f"--wait={value}"])
    assert exited.value.code == 2
    assert f"argument --wait: {value!r} is not a number of seconds, 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("20", 20.0), ("0.5", 0.5)])
def test_a_wait_in_seconds(value: str, seconds: float) -> None:
    assert build_parser().parse_args(["probe", "--wait", value]).wait == seconds
    assert build_parser().parse_args(["probe"]).wait == 0.0
