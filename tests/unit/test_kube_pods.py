"""PodView: the API server's JSON of a pod decoded into the fields kubespiffed reads, as lightkube
decodes it (list pages, single objects, watch events), and matched by the registry exactly as a Pod."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

from lightkube import AsyncClient
from lightkube.core import decoders
from lightkube.core.generic_client import GenericClient
from lightkube.resources.core_v1 import Pod

from kubespiffe.kube.pods import PodView
from kubespiffe.registry.live import Registry, pod_facts
from kubespiffe.spiffe.spiffeid import TrustDomain

POD: dict[str, Any] = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {
        "name": "api-7d9f",
        "namespace": "team",
        "uid": "4f1b6f0e-9a3c-4d7e-8c1a-000000000001",
        "resourceVersion": "4711",
        "labels": {"app": "api", "pod-template-hash": "7d9f"},
        "deletionTimestamp": "2026-11-27T11:30:00Z",
        "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}],
    },
    "spec": {
        "containers": [
            {"name": "app", "image": "registry.invalid/app:1", "env": [{"name": "A", "value": "1"}]}
        ],
        "serviceAccountName": "api",
        "nodeName": "node-1",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
    },
    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.1"},
}


def test_a_list_page_decodes_to_the_fields_read_and_nothing_else() -> None:
    page = {"kind": "PodList", "metadata": {"resourceVersion": "99", "continue": "next"}, "items": [POD]}
    cont, version, items = decoders.decode_list(json.dumps(page).encode(), PodView)
    assert (cont, version) == ("next", "99")
    [pod] = items
    assert isinstance(pod, PodView)
    assert pod.metadata is not None and pod.spec is not None and pod.status is not None
    assert (pod.metadata.namespace, pod.metadata.name) == ("team", "api-7d9f")
    assert pod.metadata.uid == POD["metadata"]["uid"]
    assert pod.metadata.resourceVersion == "4711"
    assert pod.metadata.labels == {"app": "api", "pod-template-hash": "7d9f"}
    assert pod.metadata.deletionTimestamp == dt.datetime(2026, 11, 27, 11, 30, tzinfo=dt.UTC)
    assert (pod.spec.serviceAccountName, pod.spec.nodeName, pod.status.phase) == ("api", "node-1", "Running")
    assert not hasattr(pod.spec, "containers") and not hasattr(pod.metadata, "managedFields")


def test_a_watch_event_and_a_get_decode_the_same() -> None:
    line = json.dumps({"type": "MODIFIED", "object": POD}).encode()
    event = decoders.decode_watch_event(line)
    from_watch = decoders.decode_object(event.object, PodView)
    assert from_watch == decoders.decode_object(json.dumps(POD).encode(), PodView)


def test_it_is_requested_at_the_pods_url() -> None:
    client = GenericClient.__new__(GenericClient)
    client.namespace = "default"
    for namespace in ("team", "*"):
        view = client.prepare_request("list", res=PodView, namespace=namespace, params={"limit": 500})
        pod = client.prepare_request("list", res=Pod, namespace=namespace, params={"limit": 500})
        assert (view.url, view.params, view.response_type) == (pod.url, pod.params, PodView)
    assert client.prepare_request("list", res=PodView, namespace="*").url == "api/v1/pods"
    get = client.prepare_request("get", res=PodView, name="p", namespace="team")
    assert get.url == "api/v1/namespaces/team/pods/p"


def test_the_registry_matches_it_as_the_full_pod() -> None:
    registry = Registry(cast(AsyncClient, None), TrustDomain("example.org"), frozenset())
    view = decoders.decode_object(json.dumps(POD).encode(), PodView)
    full = decoders.decode_object(json.dumps(POD).encode(), Pod)
    assert pod_facts(view) == pod_facts(full)
    assert registry.identities(view) == registry.identities(full)
