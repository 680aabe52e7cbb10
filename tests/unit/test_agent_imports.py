"""What `kubespiffe agent` loads: every pod pays for each module it imports, in memory and start time
(docs/agent.md, "Cost per pod"), so what only some pods or some calls need is imported on first use."""

from __future__ import annotations

import json
import subprocess
import sys

# What `kubespiffe agent` does before its run loop: parse its command line (kubespiffe.cli.main builds
# the agent's parser only), then import kubespiffe.agent.main (cmd_agent).
AGENT_START = (
    "from kubespiffe.cli.main import parse_args\n"
    "parse_args(['agent', '--server', 'k:1', '--token-file', 't', '--bundle-file', 'b', '--socket', 's'])\n"
    "import kubespiffe.agent.main\n"
)

NOT_LOADED = {
    "grpc": "grpcio: the agent speaks gRPC with grpclib",
    "lightkube": "the Kubernetes client: kubespiffed's",
    "aiohttp": "kubespiffed's HTTPS endpoints",
    "prometheus_client": "kubespiffed's metrics",
    "yaml": "kubespiffed's configuration",
    "kubespiffe.server": "kubespiffed",
    "kubespiffe.kube": "kubespiffed's caches",
    "envoy": "Envoy's SDS messages: on the first SDS call (agent/sdslazy.py)",
    "xds": "Envoy's SDS messages: on the first SDS call",
    "udpa": "Envoy's SDS messages: on the first SDS call",
    "kubespiffe.agent.sds": "the SDS servicer: on the first SDS call",
    "jwt": "PyJWT: on the first ValidateJWTSVID call (spiffe/jwtsvid.py)",
    "grpclib.reflection": "server reflection: on its first call (agent/reflection.py)",
    "tempfile": "files mode only, on the first file written (agent/files.py)",
}


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded once it has run `code` (whatever `code` prints first)."""
    code += "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def loaded_of(loaded: set[str], forbidden: dict[str, str]) -> dict[str, str]:
    """The packages of `forbidden` (name: why not) that `loaded` holds, themselves or a submodule."""
    return {
        name: why
        for name, why in forbidden.items()
        if any(module == name or module.startswith(f"{name}.") for module in loaded)
    }


def test_the_agent_imports_only_what_every_pod_needs() -> None:
    loaded = loaded_after(AGENT_START)
    assert "kubespiffe.agent.run" in loaded  # it did import the agent
    early = loaded_of(loaded, NOT_LOADED)
    assert not early, f"imported by every agent at start: {early}"


PROBE_NOT_LOADED = {
    **NOT_LOADED,
    "cryptography": "keys and certificates: the probe only asks the agent's health service",
    "kubespiffe.agent.issuer_client": "the issuer client: `fetch --server` only (cli/direct.py)",
}


def test_the_probe_imports_no_cryptography() -> None:
    """`kubespiffe probe` runs in every injected pod's start (its postStart hook, beside the starting agent)
    and as its readiness probe: measured 39 MB and 0.2 s with cryptography, 29 MB without."""
    loaded = loaded_after(
        "import sys\nfrom kubespiffe.cli.main import main\n"
        "sys.argv = ['kubespiffe', 'probe', '--socket', '/nonexistent/agent.sock']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
    )
    assert "grpclib.client" in loaded  # it did run the probe
    early = loaded_of(loaded, PROBE_NOT_LOADED)
    assert not early, f"imported by every probe: {early}"
