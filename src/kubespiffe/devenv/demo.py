"""The README demo: `kubespiffe dev up`, one registered and one unregistered workload, both fetch.

Everything runs as real processes: the control plane, kubespiffed, and `kubespiffe fetch x509` with a
pod-bound token, just as a pod would run it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta

from kubespiffe.devenv import demo_federation, demo_node
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import WorkloadRegistration

NAMESPACE = "demo"


def _say(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m", flush=True)


def _start_dev_up(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubespiffe.cli.main", "dev", "up", "--dir", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    raise RuntimeError(f"`kubespiffe dev up` exited ({proc.wait()}) before it was ready")


async def _workloads(kubeconfig: Path, tokens: Path) -> None:
    client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="kubespiffe-demo")
    try:
        await ensure_namespace(client, NAMESPACE)
        registration = WorkloadRegistration(
            metadata=ObjectMeta(name="frontend", namespace=NAMESPACE),
            spec={
                "serviceAccountNames": ["frontend"],
                "dnsNameTemplates": ["frontend.{namespace}.svc"],
            },
        )
        await client.create(registration)
        _say("kubectl get workloadregistrations -n demo")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            current = await client.get(WorkloadRegistration, "frontend", namespace=NAMESPACE)
            conditions = (current.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                print(f"frontend  Ready={conditions[0]['status']}  reason={conditions[0]['reason']}")
                break
            await asyncio.sleep(0.2)
        for name, sa in (("frontend-7d9f", "frontend"), ("unattested-5c2b", "unregistered")):
            pod = await create_pod(client, NAMESPACE, name, sa, labels={"app": sa})
            token_file = tokens / f"{name}.token"
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(await pod_token(client, pod))
    finally:
        await client.close()


def _fetch(directory: Path, token_file: Path, out: Path) -> int:
    server = (directory / "server").read_text().strip()
    cmd = [
        "kubespiffe",
        "fetch",
        "x509",
        "--server",
        server,
        "--token-file",
        str(token_file),
        "--bundle-file",
        str(directory / "bundle.pem"),
        "--write",
        str(out),
    ]
    print("$ " + " ".join(cmd).replace(str(directory), "$DEMO"), flush=True)
    exe = [sys.executable, "-m", "kubespiffe.cli.main", *cmd[1:]]
    code = subprocess.run(exe, check=False).returncode
    print(f"(exit code {code})")
    return code


def main() -> int:
    directory = Path(os.environ.get("KUBESPIFFE_DEMO_DIR", ".demo")).resolve()
    directory.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        return 0 if demo_node.run(directory / "node") else 1
    _say("1. kubespiffe dev up: a local kube-apiserver + etcd, the CRDs, kubespiffed under its own RBAC")
    dev = _start_dev_up(directory)
    try:
        tokens = (
            Path("/dev/shm" if Path("/dev/shm").is_dir() else directory) / f"kubespiffe-demo-{os.getpid()}"
        )
        tokens.mkdir(mode=0o700, exist_ok=True)
        _say("2. a WorkloadRegistration for service account 'frontend', and two pods with pod-bound tokens")
        asyncio.run(_workloads(directory / "kubeconfig", tokens))
        _say("3. the registered pod fetches its X.509-SVID (the key is made here, only a CSR is sent)")
        ok = _fetch(directory, tokens / "frontend-7d9f.token", directory / "svids") == 0
        if ok:
            leaf = x509.load_pem_x509_certificate((directory / "svids" / "svid.0.pem").read_bytes())
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [f"URI:{u}" for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
            names += [f"DNS:{d}" for d in san.get_values_for_type(x509.DNSName)]
            print(f"X509v3 Subject Alternative Name: {', '.join(names)}")
            print(f"Not After: {leaf.not_valid_after_utc.isoformat()}")
        _say("4. the unregistered pod is refused")
        refused = _fetch(directory, tokens / "unattested-5c2b.token", directory / "refused") == 3
        _say("5. kubespiffed's log says what it decided")
        for line in (directory / "logs").glob("kubespiffed-*.log"):
            for entry in line.read_text().splitlines():
                if " attested " in entry or " rejected " in entry:
                    print(entry)
        for token_file in tokens.iterdir():
            token_file.unlink()
        tokens.rmdir()
    finally:
        _say("6. stopping")
        dev.send_signal(signal.SIGINT)
        dev.wait(30)
    federated = demo_federation.run(directory / "federation")
    _say(
        "As root, `sudo scripts/demo` shows the real-node path instead: kubespiffe installed from its image "
        "and Helm chart on a local kubelet, the injected sidecar, an SVID fetched inside a pod, an "
        "unregistered pod refused (docs/install.md, 'On this machine')"
    )
    return 0 if ok and refused and federated else 1


if __name__ == "__main__":
    sys.exit(main())
