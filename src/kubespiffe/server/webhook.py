"""The sidecar-injection webhook, served by kubespiffed itself: the `/inject` route and its caBundle.

    route = inject_route(settings, registry.namespaces, client)       # POST /inject on the webhook port
    await CaBundleSync(client, "kubespiffe-injection", trust, leader).run()

What to inject is decided in `kubespiffe.injection` (pure); this adapter decodes the AdmissionReview,
looks up the namespace's labels in the watch cache, logs one line per decision, counts it, and records a
Warning Event when a pod is admitted unchanged because it cannot be patched safely.

The webhook's TLS is kubespiffed's own SVID (its DNS names are the Service's), so the API server must
trust kubespiffed's CA: the Lease holder writes the published X.509 authorities (prepared, active and
retired) into every webhook's `clientConfig.caBundle` and rewrites them when the bundle changes, so the
serving certificate stays verifiable across CA rotation (a new CA is published before it signs).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from aiohttp import web
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import ObjectReference
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType
from prometheus_client import Counter

from kubespiffe.injection import (
    InjectionSettings,
    MalformedReview,
    Patch,
    Refused,
    Skipped,
    Unchanged,
    decide,
    decode_review,
    parse_review,
    respond,
)
from kubespiffe.kube.events import record_warning
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.kube.watchcache import WatchCache
from kubespiffe.server.https import Route
from kubespiffe.spiffe.bundle import BundleSet, certificates_to_pem
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffed.webhook")

INJECTIONS = Counter("kubespiffe_injection_requests_total", "Sidecar injection decisions", ["outcome"])
# Re-check the webhook configuration this often even without a bundle change (an upgrade or a person
# may have reset its caBundle).
RECHECK_SECONDS = 30.0
# The API server sends the whole review at once (and waits at most 30 s for the answer); a body that
# trickles in is not the API server.
BODY_TIMEOUT = 10.0


def inject_route(
    settings: InjectionSettings, namespaces: WatchCache[Namespace], client: AsyncClient
) -> Route:
    """POST: an AdmissionReview in, an AdmissionReview out (always allowed; 400 for a malformed one)."""
    events: set[asyncio.Task[None]] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                body = await request.read()
        except TimeoutError:
            INJECTIONS.labels("malformed").inc()
            return web.Response(status=408, text="request body too slow\n")
        try:
            document = decode_review(body)
            admission = parse_review(document)
        except MalformedReview as exc:
            INJECTIONS.labels("malformed").inc()
            log.warning("injection request refused: %s", exc)
            return web.Response(status=400, text=f"malformed AdmissionReview: {exc}\n")
        namespace = namespaces.get(None, admission.namespace) if admission.namespace else None
        labels = (namespace.metadata.labels or {}) if namespace and namespace.metadata else None
        outcome = decide(admission, settings, labels)
        pod = admission.pod if isinstance(admission.pod, dict) else {}
        metadata = pod.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        name = str(metadata.get("name") or metadata.get("generateName") or "?")
        where = f"pod={name!r} namespace={admission.namespace!r}"
        if isinstance(outcome, Patch):
            INJECTIONS.labels("injected").inc()
            log.info("injected %s: %s", where, outcome.summary)
        elif isinstance(outcome, Refused):
            INJECTIONS.labels("refused").inc()
            log.warning("admitted without the sidecar %s: %s", where, outcome.warning)
            involved = ObjectReference(kind="Pod", apiVersion="v1", name=name, namespace=admission.namespace)
            task = asyncio.create_task(
                record_warning(client, involved, "SidecarNotInjected", outcome.warning)
            )
            events.add(task)
            task.add_done_callback(events.discard)
        elif isinstance(outcome, Unchanged | Skipped):
            INJECTIONS.labels("unchanged").inc()
            log.debug("not injected %s: %s", where, outcome.reason)
        return web.json_response(respond(admission, outcome))

    return Route(handler, methods=("POST",))


def ca_bundle(bundles: BundleSet) -> str:
    """The webhook's caBundle: every published X.509 authority of our own trust domain, base64 PEM."""
    return base64.b64encode(certificates_to_pem(list(bundles.own.x509_authorities))).decode()


class CaBundleSync:
    """Keeps `caBundle` of each webhook in one MutatingWebhookConfiguration equal to our CA bundle."""

    def __init__(
        self, client: AsyncClient, name: str, trust: Versioned[BundleSet], leader: LeaderElector
    ) -> None:
        self._client = client
        self._name = name
        self._trust = trust
        self._leader = leader
        self._missing_logged = False

    async def run(self) -> None:
        """While leading: sync now, then on every bundle change or every RECHECK_SECONDS; retry fast
        while the configuration is missing or the write failed. Not leading: check again in a second."""
        while True:
            if not self._leader.is_leader:
                await asyncio.sleep(1.0)
                continue
            version, bundles = self._trust.version, self._trust.current
            try:
                done = await self.sync(ca_bundle(bundles))
            except ApiError as exc:
                log.warning("could not update the caBundle of %s: %s", self._name, exc.status.message)
                done = False
            await self._trust.wait_newer(version, RECHECK_SECONDS if done else 1.0)

    async def sync(self, wanted: str) -> bool:
        """Write `wanted` into every webhook whose caBundle differs; False if the configuration is missing."""
        try:
            current = await self._client.get(MutatingWebhookConfiguration, self._name)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            if not self._missing_logged:
                log.warning("MutatingWebhookConfiguration %s does not exist (yet); will retry", self._name)
                self._missing_logged = True
            return False
        self._missing_logged = False
        stale = [w.name for w in current.webhooks or () if (w.clientConfig.caBundle or "") != wanted]
        if not stale:
            return True
        patch: dict[str, Any] = {
            "webhooks": [{"name": n, "clientConfig": {"caBundle": wanted}} for n in stale]
        }
        await self._client.patch(
            MutatingWebhookConfiguration, self._name, patch, patch_type=PatchType.STRATEGIC
        )
        log.info("caBundle of %s updated (webhooks %s)", self._name, ", ".join(stale))
        return True
