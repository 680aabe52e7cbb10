"""The Debian packages a local node needs, installed by the repository itself (CI starts from bare Debian).

containerd, runc and the CNI plugins run the pods; iptables is what the kubelet and kube-proxy program;
nftables lets teardown drop the (empty) tables iptables-nft created, so the machine is left as found;
busybox-static is the rootfs of the throwaway test image.
Run as root: `python -m kubespiffe.devenv.hostpackages` (scripts/bootstrap does).
"""

from __future__ import annotations

import os
import subprocess
import sys

PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "nftables", "busybox-static")


def missing() -> list[str]:
    """Packages not installed, according to dpkg (which knows about partial installs too)."""
    absent = []
    for package in PACKAGES:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        if status.stdout.strip() != "install ok installed":
            absent.append(package)
    return absent


def ensure() -> list[str]:
    """Install whatever is missing (apt-get update first: a fresh image has no package lists)."""
    absent = missing()
    if not absent:
        return []
    if os.geteuid() != 0:
        raise RuntimeError(f"installing {' '.join(absent)} needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *absent], check=True, env=env
    )
    return absent


if __name__ == "__main__":
    installed = ensure()
    print(f"installed: {' '.join(installed)}" if installed else "node packages present", file=sys.stderr)
