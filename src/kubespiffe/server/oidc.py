"""OIDC discovery served by kubespiffed itself (no extra Deployment): two GET routes on `--oidc-port`.

    served = await oidc_endpoint(config, client, authority.trust)    # None unless --oidc-port
    server, tls = served; loops.append(tls.run)                       # tls follows its Secret

What the documents say is decided in `kubespiffe.federation.oidc`; this adapter answers from the newest
bundle set on every request (so a prepared key is served from the moment it is published) and tells
caches to keep an answer no longer than the bundle's refresh hint, which is a third of the time a new key
is published before it signs. Every other path is a bare 404, every other method a bare 405: the port
faces the internet and says nothing about what runs behind it.

The certificate comes from a `kubernetes.io/tls` Secret (a public CA's, typically cert-manager's), read
at start and re-read every `TLS_RELOAD_SECONDS`, so a renewed certificate is served without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl

from aiohttp import web
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret

from kubespiffe.federation.oidc import CONTENT_TYPE, OidcIssuer, discovery_document, jwks_document
from kubespiffe.server import https
from kubespiffe.server.config import ServerConfig
from kubespiffe.server.https import Route, server_context
from kubespiffe.spiffe.bundle import BundleSet
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffed.oidc")

TLS_RELOAD_SECONDS = 60.0


def oidc_routes(issuer: OidcIssuer, trust: Versioned[BundleSet]) -> dict[str, Route]:
    """GET/HEAD on the discovery document and the JWKS, from the own bundle as it is now."""

    def respond(body: bytes) -> web.Response:
        own = trust.current.own
        headers = {"Content-Type": CONTENT_TYPE}
        if own.refresh_hint is not None:
            headers["Cache-Control"] = f"public, max-age={own.refresh_hint}"
        return web.Response(body=body, headers=headers)

    async def discovery(request: web.Request) -> web.StreamResponse:
        return respond(discovery_document(issuer, trust.current.own))

    async def jwks(request: web.Request) -> web.StreamResponse:
        return respond(jwks_document(trust.current.own))

    return {issuer.discovery_path: Route(discovery), issuer.jwks_path: Route(jwks)}


async def oidc_endpoint(
    config: ServerConfig, client: AsyncClient, trust: Versioned[BundleSet]
) -> tuple[https.HttpsServer, SecretTls] | None:
    """The OIDC port listening with its Secret's certificate, or None when --oidc-port is 0."""
    issuer = config.oidc()
    if not config.oidc_port or issuer is None or not config.oidc_tls_secret:
        return None
    tls = await SecretTls.load(client, config.namespace, config.oidc_tls_secret)
    server = await https.serve(config.listen_host, config.oidc_port, tls, oidc_routes(issuer, trust))
    log.info(
        "OIDC discovery for issuer %s on %s:%d (%s)",
        issuer.url,
        config.listen_host,
        config.oidc_port,
        issuer.discovery_path,
    )
    return server, tls


class SecretTls:
    """A `TlsSource` from a kubernetes.io/tls Secret (tls.crt, tls.key), followed while kubespiffed runs."""

    def __init__(self, client: AsyncClient, namespace: str, name: str) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name
        self._seen: tuple[str, str] | None = None
        self._context: ssl.SSLContext | None = None
        self.generation = 0

    @classmethod
    async def load(cls, client: AsyncClient, namespace: str, name: str) -> SecretTls:
        """Read the Secret once; a missing Secret or one without a usable key pair stops kubespiffed."""
        tls = cls(client, namespace, name)
        try:
            await tls.reload()
        except (ApiError, ValueError, ssl.SSLError) as exc:
            raise SystemExit(f"OIDC TLS Secret {namespace}/{name}: {_reason(exc)}") from None
        return tls

    async def reload(self) -> bool:
        """Swap in the Secret's certificate if it changed; True when it did."""
        secret = await self._client.get(Secret, self._name, namespace=self._namespace)
        data = secret.data or {}
        if "tls.crt" not in data or "tls.key" not in data:
            raise ValueError("has no tls.crt and tls.key")
        pair = (data["tls.crt"], data["tls.key"])
        if pair == self._seen:
            return False
        self._context = server_context(base64.b64decode(pair[0]), base64.b64decode(pair[1]))
        self._seen = pair
        self.generation += 1
        return True

    def refresh(self) -> int:
        return self.generation

    def ssl_context(self) -> ssl.SSLContext:
        assert self._context is not None  # load() set it
        return self._context

    async def run(self) -> None:
        """Re-read the Secret; on failure keep serving the certificate loaded last, and say why."""
        while True:
            await asyncio.sleep(TLS_RELOAD_SECONDS)
            try:
                if await self.reload():
                    log.info("OIDC TLS certificate reloaded from Secret %s/%s", self._namespace, self._name)
            except (ApiError, ValueError, ssl.SSLError) as exc:
                log.warning(
                    "OIDC TLS Secret %s/%s not reloaded (serving the previous certificate): %s",
                    self._namespace,
                    self._name,
                    _reason(exc),
                )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return f"{exc.status.code} {exc.status.reason or exc.status.message}"
    if isinstance(exc, ssl.SSLError):
        return "tls.crt and tls.key are not a matching PEM certificate chain and private key"
    return str(exc)
