"""Files mode: atomic replacement, so a reader never sees a half-written file; keys are 0600 from birth;
only identities the pod holds have files."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from kubespiffe.agent.files import remove_x509_svid, write_atomic, write_x509_svids
from kubespiffe.spiffe.spiffeid import SpiffeId
from kubespiffe.spiffe.x509svid import X509Svid
from tests.unit.certs import ec_key, make_ca, make_leaf

_NOW = dt.datetime.now(dt.UTC)


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "svid.0.pem"
    versions = [b"A" * 200_000, b"B" * 300_000]
    write_atomic(target, versions[0])
    stop = threading.Event()
    seen: set[bytes] = set()
    torn: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if data not in versions:
                torn.append(len(data))
            seen.add(data[:1])

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(5000):
        write_atomic(target, versions[i % 2])
        if i >= 200 and len(seen) == 2:
            break
    stop.set()
    thread.join()
    assert torn == []
    assert seen == {b"A", b"B"}
    assert [p.name for p in tmp_path.iterdir()] == ["svid.0.pem"], "no temporary files are left behind"


def test_key_files_are_private_from_the_start(tmp_path: Path) -> None:
    key = tmp_path / "svid.0.key"
    write_atomic(key, b"secret", 0o600)
    assert key.stat().st_mode & 0o777 == 0o600
    write_atomic(key, b"secret2", 0o600)
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_bytes() == b"secret2"


def test_identities_no_longer_held_leave_the_directory(tmp_path: Path) -> None:
    ca = make_ca("ca", not_before=_NOW - dt.timedelta(days=1), not_after=_NOW + dt.timedelta(days=1))
    svids = [
        X509Svid(
            SpiffeId.parse(f"spiffe://example.org/w{i}"),
            (make_leaf(ca, f"spiffe://example.org/w{i}").cert,),
            ec_key(),
        )
        for i in range(3)
    ]
    write_x509_svids(tmp_path, svids, [ca.cert])
    (tmp_path / "unrelated.pem").write_bytes(b"kept")
    write_x509_svids(tmp_path, svids[:1], [ca.cert])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bundle.0.pem",
        "svid.0.key",
        "svid.0.pem",
        "unrelated.pem",
    ]
    remove_x509_svid(tmp_path, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.0.pem", "unrelated.pem"], (
        "an expired SVID and its key are withdrawn; the trust bundle stays"
    )
