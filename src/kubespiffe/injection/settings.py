"""What the injector puts into a pod: the names it owns and the settings kubespiffed configures.

The names below are a contract with pods already running: a pod injected by one version is recognised
(and left alone) by the next only while the sidecar name and the annotation stay the same.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kubespiffe import __version__
from kubespiffe.constants import AUDIENCE, BUNDLE_CONFIGMAP, SERVER_NAME

# Namespace label `enabled` turns injection on for the namespace; pod label `disabled` opts a pod out.
INJECT_LABEL: Final = "kubespiffe.io/inject"
INJECT_ENABLED: Final = "enabled"
INJECT_DISABLED: Final = "disabled"
# Recorded on every injected pod (value: the injecting kubespiffe version); with the sidecar it marks a
# pod as done, which makes a second pass (reinvocation, a re-applied manifest) change nothing.
INJECTED_ANNOTATION: Final = "kubespiffe.io/injected"

SIDECAR_NAME: Final = "kubespiffe-agent"
TOKEN_VOLUME: Final = "kubespiffe-token"  # noqa: S105 (a volume name)
BUNDLE_VOLUME: Final = "kubespiffe-bundle"
SOCKET_VOLUME: Final = "kubespiffe-socket"
OUR_VOLUMES: Final = (TOKEN_VOLUME, BUNDLE_VOLUME, SOCKET_VOLUME)
# Where the sidecar (only) sees its token and bootstrap bundle, as in docs/agent.md.
TOKEN_DIR: Final = "/var/run/kubespiffe"  # noqa: S105 (a path)
TOKEN_FILE: Final = "token"  # noqa: S105 (a file name)
BUNDLE_DIR: Final = "/var/run/kubespiffe-bundle"
SOCKET_ENV: Final = "SPIFFE_ENDPOINT_SOCKET"
AGENT_UID: Final = 65532  # the image's user

DEFAULT_RESOURCES: Final[Mapping[str, Mapping[str, str]]] = {
    # The agent's RSS is about 43 MB (docs/agent.md, "Cost per pod"); the limit leaves room for renewals,
    # streams and the postStart hook's probe process.
    "requests": {"cpu": "10m", "memory": "64Mi"},
    "limits": {"memory": "128Mi"},
}

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_ADDRESS = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}")
_PULL_POLICIES = frozenset({"Always", "IfNotPresent", "Never"})
# The kubelet refuses projected token lifetimes outside these bounds.
TOKEN_EXPIRATION_MIN: Final = 600
TOKEN_EXPIRATION_MAX: Final = 2**32


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


@dataclass(frozen=True)
class InjectionSettings:
    """How to build the sidecar; kubespiffed makes one from its flags, checked here once at start-up.

    `namespace` is kubespiffed's own: the agent reaches `<service>.<namespace>.svc:<port>`, and pods in
    that namespace are never injected (kubespiffed must not depend on itself to start).
    """

    image: str
    namespace: str
    image_pull_policy: str = "IfNotPresent"
    service: str = SERVER_NAME
    port: int = 443
    server_name: str = SERVER_NAME
    audience: str = AUDIENCE
    token_expiration_seconds: int = 600
    bundle_configmap: str = BUNDLE_CONFIGMAP
    bundle_key: str = "ca.crt"
    socket_path: str = "/run/spiffe/agent.sock"
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: DEFAULT_RESOURCES)
    version: str = __version__
    # HOST:PORT the agent dials instead of the Service's cluster DNS name (clusters without DNS for
    # pods, or a fixed ClusterIP); the TLS name checked stays `server_name`.
    server_address: str | None = None
    # The agent's --trust-domain, for bundles that name none (an upstream authority's root).
    trust_domain: str = ""

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid injection settings: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        found = []
        if not self.image or any(c.isspace() for c in self.image):
            found.append(f"image {self.image!r} is empty or has whitespace")
        if self.image_pull_policy not in _PULL_POLICIES:
            found.append(f"image pull policy must be one of {sorted(_PULL_POLICIES)}")
        for what, value in (("namespace", self.namespace), ("service", self.service)):
            if not _DNS_LABEL.fullmatch(value):
                found.append(f"{what} {value!r} is not a DNS label")
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            found.append(f"port {self.port!r} is not 1-65535")
        if self.server_address is not None and not _ADDRESS.fullmatch(self.server_address):
            found.append(f"server address {self.server_address!r} is not HOST:PORT")
        if not self.server_name or not self.audience:
            found.append("server name and audience must not be empty")
        expiration = self.token_expiration_seconds
        if isinstance(expiration, bool) or not TOKEN_EXPIRATION_MIN <= expiration <= TOKEN_EXPIRATION_MAX:
            found.append(f"token expiration must be {TOKEN_EXPIRATION_MIN}-{TOKEN_EXPIRATION_MAX} seconds")
        if len(self.bundle_configmap) > 253 or not _DNS_SUBDOMAIN.fullmatch(self.bundle_configmap):
            found.append(f"bundle ConfigMap {self.bundle_configmap!r} is not a DNS subdomain")
        key = self.bundle_key
        if len(key) > 253 or key in (".", "..") or not _CONFIGMAP_KEY.fullmatch(key):
            found.append(f"bundle key {key!r} is not a ConfigMap key")
        path = self.socket_path
        if not path.startswith("/") or posixpath.normpath(path) != path or posixpath.dirname(path) == "/":
            found.append(f"socket path {path!r} must be absolute, normalised and below a directory")
        elif any(_nested(self.socket_dir, d) for d in (TOKEN_DIR, BUNDLE_DIR)):
            found.append(f"socket directory {self.socket_dir} overlaps {TOKEN_DIR} or {BUNDLE_DIR}")
        if not set(self.resources) <= {"requests", "limits"}:
            found.append("resources take only 'requests' and 'limits'")
        if not self.version:
            found.append("version must not be empty")
        return found

    @property
    def server(self) -> str:
        """kubespiffed's issuer API as the agent dials it (the Service's cluster DNS name by default)."""
        return self.server_address or f"{self.service}.{self.namespace}.svc:{self.port}"

    @property
    def socket_dir(self) -> str:
        """The emptyDir's mount point, shared by the sidecar and the app containers."""
        return posixpath.dirname(self.socket_path)

    @property
    def socket_uri(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def bundle_file(self) -> str:
        return f"{BUNDLE_DIR}/{self.bundle_key}"

    def agent_command(self) -> list[str]:
        """The sidecar's command line (replaces the image's `kubespiffed` entrypoint)."""
        return [
            "kubespiffe",
            "agent",
            "--server",
            self.server,
            "--server-name",
            self.server_name,
            "--token-file",
            f"{TOKEN_DIR}/{TOKEN_FILE}",
            "--bundle-file",
            self.bundle_file,
            "--socket",
            self.socket_path,
            *(["--trust-domain", self.trust_domain] if self.trust_domain else []),
        ]
