"""Write SVIDs as files (svid.N.pem, svid.N.key, bundle.N.pem) so that no reader sees a half-written file.

Each file is written to a temporary name in the same directory and renamed over the old one; keys are
created with mode 0600 from the start (never widened, never chmod-ed after the fact). Files of identities
the pod no longer has are removed, and an expired SVID's files are withdrawn (`remove_x509_svid`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from kubespiffe.spiffe.bundle import certificates_to_pem
from kubespiffe.spiffe.x509svid import X509Svid

_IDENTITY_FILE = re.compile(r"(?:svid|bundle)\.(\d+)\.(?:pem|key)")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    # Here, not at the top: tempfile (with shutil, bz2 and lzma: about 3 ms and 0.5 MB) is for files mode
    # only, and every agent imports this module (docs/agent.md, "Cost per pod").
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_x509_svids(
    directory: Path, svids: Sequence[X509Svid], bundle: Sequence[x509.Certificate]
) -> list[Path]:
    """svid.N.pem (leaf first, then chain), svid.N.key (PKCS#8 PEM, 0600), bundle.N.pem for each identity;
    the files of identities numbered N or more (from an earlier answer or run) are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    bundle_pem = certificates_to_pem(list(bundle))
    written: list[Path] = []
    for index, svid in enumerate(svids):
        files = {
            directory / f"svid.{index}.pem": (svid.chain_pem(), 0o644),
            directory / f"svid.{index}.key": (svid.key_pem(), 0o600),
            directory / f"bundle.{index}.pem": (bundle_pem, 0o644),
        }
        for path, (data, mode) in files.items():
            write_atomic(path, data, mode)
            written.append(path)
    for path in directory.iterdir():
        match = _IDENTITY_FILE.fullmatch(path.name)
        if match and int(match.group(1)) >= len(svids):
            path.unlink(missing_ok=True)
    return written


def remove_x509_svid(directory: Path, index: int) -> None:
    """Withdraw identity N's SVID and key (an expired credential); bundle.N.pem, trust only, stays."""
    for name in (f"svid.{index}.pem", f"svid.{index}.key"):
        (directory / name).unlink(missing_ok=True)
