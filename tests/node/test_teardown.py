"""Teardown leaves the machine as found even when the run fails: an exception, or SIGTERM to the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubespiffe.devenv import hoststate
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.node import LOCK_FILE, RECORD_FILE, Node
from tests.node.conftest import record
from tests.node.pods import NODE_TESTS

pytestmark = NODE_TESTS

CHILD = """
import sys, time
from pathlib import Path
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.node import Node

log_dir = Path(sys.argv[1])
with Node(ControlPlane("sigterm", log_dir=log_dir, with_nodes=True), log_dir=log_dir) as node:
    print(node.bridge, flush=True)
    time.sleep(300)
"""


class Boom(Exception):
    pass


def fail_inside(node: Node) -> None:
    with node:
        assert node.dir.is_dir() and RECORD_FILE.exists()
        raise Boom


def test_exception_inside_node_tears_down(tmp_path: Path) -> None:
    plane = ControlPlane("boom", log_dir=tmp_path, with_nodes=True)
    node = Node(plane, log_dir=tmp_path)
    with pytest.raises(Boom):
        fail_inside(node)
    assert not plane.running
    node.check_clean()
    assert not RECORD_FILE.exists() and not LOCK_FILE.exists()


def test_sigterm_tears_down(tmp_path: Path) -> None:
    before = hoststate.HostSnapshot.take()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert child.stdout is not None
        bridge = child.stdout.readline().strip()
        assert bridge.startswith("kspf"), f"child did not start a node; logs in {tmp_path}"
        assert bridge in hoststate.links()
        stopping = time.monotonic()
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        record("teardown on SIGTERM (node + control plane)", time.monotonic() - stopping)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != -signal.SIGTERM, "SIGTERM killed the process without teardown"
    hoststate.check_clean(before, bridge)
    assert not RECORD_FILE.exists() and not LOCK_FILE.exists()
