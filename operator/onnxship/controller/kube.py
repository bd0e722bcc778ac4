"""A thin Kubernetes client for the objects the operator owns: get, list, apply, delete.

Built on the `kubernetes` package's ApiClient (kubeconfig or in-cluster credentials) with
raw JSON, so that the builders' dicts go over the wire unchanged. ``apply`` is
create-or-merge-patch guarded by a content hash annotation. With informers started
(``start_informers``), gets and lists of the kinds they follow read their cache and the
operator's writes go into it: a reconcile that changes nothing sends no request.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from onnxship.plan.workloads import A_CONFIG_HASH, config_hash

from .informers import SELECTOR, Informer, OnChange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection(self, namespace: str) -> str:
        """The kind's objects in ``namespace``, or in every namespace when it is ""."""
        if namespace:
            return self.path(namespace)
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{root}/{self.plural}"

    def path(self, namespace: str, name: str = "", subresource: str = "") -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{root}/namespaces/{namespace}/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


KINDS: dict[str, Kind] = {
    "Deployment": Kind("apps", "v1", "deployments"),
    "Service": Kind("", "v1", "services"),
    "ConfigMap": Kind("", "v1", "configmaps"),
    "Secret": Kind("", "v1", "secrets"),
    "Pod": Kind("", "v1", "pods"),
    "Job": Kind("batch", "v1", "jobs"),
    "HTTPRoute": Kind("gateway.networking.k8s.io", "v1", "httproutes"),
    "ModelDeployment": Kind("onnxship.io", "v1alpha1", "modeldeployments"),
}

# Called after every API request with (verb, kind, subresource): the RBAC test and metrics.
RequestHook = Callable[[str, str, str], None]

# The kinds a reconcile pass reads on every pass, followed by informers: the children (those
# carrying the owner label), and the ModelDeployments themselves (all of them).
CACHED_KINDS = ("Deployment", "Service", "ConfigMap", "Job", "ModelDeployment")
SELECTORS: dict[str, str | None] = {"ModelDeployment": None}


class KubeError(RuntimeError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Kubernetes API answered {status}: {reason}")
        self.status = status


class Kube:
    def __init__(self, api: k8s.ApiClient, on_request: RequestHook | None = None) -> None:
        self._api = api
        self._on_request = on_request
        self._informers: dict[str, Informer] = {}

    # ---------------------------------------------------------------- informers

    def start_informers(
        self,
        namespaces: list[str] | None = None,
        on_change: OnChange | None = None,
        kinds: tuple[str, ...] = CACHED_KINDS,
    ) -> None:
        """Follow ``kinds`` in ``namespaces`` (None or [] = all) from now on."""
        # A client of their own: each watch holds a connection for minutes, which would
        # otherwise leave the passes' pool short and make them open new ones.
        api = k8s.ApiClient(self._api.configuration)
        for kind in kinds:
            informer = Informer(
                api,
                kind,
                KINDS[kind].collection,
                namespaces or [""],
                on_change=on_change,
                on_request=lambda verb, kind, _: self._hook(verb, kind, ""),
                selector=SELECTORS.get(kind, SELECTOR),
            )
            self._informers[kind] = informer
            informer.start()

    def stop_informers(self) -> None:
        for informer in self._informers.values():
            informer.stop()
        self._informers = {}

    def _cache(self, kind: str, namespace: str) -> Informer | None:
        informer = self._informers.get(kind)
        if informer is None or not informer.covers(namespace):
            return None
        return informer if informer.wait_synced() else None

    def _hook(self, verb: str, kind: str, subresource: str) -> None:
        if self._on_request:
            self._on_request(verb, kind, subresource)

    def _wrote(self, obj: Any) -> None:
        if isinstance(obj, dict) and (informer := self._informers.get(obj.get("kind", ""))):
            informer.wrote(obj)

    @classmethod
    def from_environment(cls, connections: int = 0) -> Kube:
        """In-cluster credentials when in a pod, else the current kubeconfig context.

        ``connections``: keep that many connections to the API server open for reuse (the
        client's default is 5 per CPU: fewer than the operator's pass threads, which then
        open connections only to discard them, "Connection pool is full" in the log)."""
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            # Read KUBECONFIG now: the kubernetes package froze it at its import.
            path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
            k8s_config.load_kube_config(config_file=path)
        cfg = k8s.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, connections)
        return cls(k8s.ApiClient(cfg))

    @classmethod
    def for_url(cls, url: str, token: str = "") -> Kube:
        cfg = k8s.Configuration(host=url)
        if token:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        return cls(k8s.ApiClient(cfg))

    # ---------------------------------------------------------------- raw

    def _call(
        self,
        verb: str,
        method: str,
        kind: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        subresource: str = "",
    ) -> Any:
        self._hook(verb, kind, subresource)
        method, url, headers, body, _ = self._api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self._api.call_api(method, url, header_params=headers, body=body)
        except ApiException as exc:
            raise KubeError(exc.status or 0, _reason(exc)) from None
        resp.read()
        if resp.status >= 400:
            raise KubeError(resp.status, _message(resp.data) or str(resp.reason))
        data = resp.data
        return json.loads(data) if data else None

    # ---------------------------------------------------------------- typed

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        cache = self._cache(kind, namespace)
        if cache is not None:
            return cache.get(namespace, name)
        return self.read(kind, namespace, name)

    def current(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """``get``, and on a miss in a followed kind (an object so new that its event has not
        arrived) a GET whose answer the cache keeps; None when the cache saw it deleted."""
        cache = self._cache(kind, namespace)
        if cache is None:
            return self.read(kind, namespace, name)
        obj = cache.get(namespace, name)
        if obj is not None or cache.gone(namespace, name):
            return obj
        obj = self.read(kind, namespace, name)
        if obj is not None:
            cache.observe(obj)
        return obj

    def seen(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """``obj`` as kopf saw it: into the cache when newer than what it holds (see
        Informer.observe). True when kept."""
        informer = self._informers.get(kind)
        return informer is not None and informer.observe(obj)

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """GET from the API server, whatever the cache holds."""
        try:
            return self._call("get", "GET", kind, KINDS[kind].path(namespace, name))  # type: ignore[no-any-return]
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, kind: str, namespace: str, selector: Mapping[str, str], fresh: bool = False
    ) -> list[dict[str, Any]]:
        """From the informer's cache when it follows ``kind``; ``fresh``: from the API server."""
        cache = None if fresh else self._cache(kind, namespace)
        if cache is not None:
            return cache.list(namespace, selector)
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in selector.items()))]
        data = self._call("list", "GET", kind, KINDS[kind].path(namespace), query=query)
        items = (data or {}).get("items", [])
        # Filter again: some API servers (and mocks) ignore labelSelector.
        return [
            i
            for i in items
            if all(i.get("metadata", {}).get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta["namespace"])
        created = self._call("create", "POST", obj["kind"], path, body=dict(obj))
        self._wrote(created)
        return created  # type: ignore[no-any-return]

    def patch(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any], subresource: str = ""
    ) -> dict[str, Any]:
        try:
            patched = self._call(
                "patch",
                "PATCH",
                kind,
                KINDS[kind].path(namespace, name, subresource),
                body=dict(patch),
                content_type="application/merge-patch+json",
                subresource=subresource,
            )
        except KubeError as exc:
            if exc.status == 409 and (informer := self._informers.get(kind)) is not None:
                # Someone else's write won: the next pass must start from the object as it
                # is now, not from what the cache (or a watch event) last said.
                fresh = self.read(kind, namespace, name)
                if fresh is None:
                    informer.deleted(namespace, name)
                else:
                    informer.replace(fresh)
            raise
        self._wrote(patched)
        return patched  # type: ignore[no-any-return]

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (dependents go with it); False when already gone."""
        try:
            self._call(
                "delete",
                "DELETE",
                kind,
                KINDS[kind].path(namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status == 404:
                if informer := self._informers.get(kind):
                    informer.deleted(namespace, name)
                return False
            raise
        if informer := self._informers.get(kind):
            informer.deleted(namespace, name)
        return True

    def apply(self, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj``, or patch it when its content changed. Returns (object, changed)."""
        digest = config_hash(obj)
        desired = _with_annotation(obj, A_CONFIG_HASH, digest)
        meta = obj["metadata"]
        live = self.get(obj["kind"], meta["namespace"], meta["name"])
        if live is None:
            try:
                return self.create(desired), True
            except KubeError as exc:
                if exc.status != 409:  # created meanwhile by a previous, interrupted pass
                    raise
                live = self.read(obj["kind"], meta["namespace"], meta["name"]) or {}
        if live.get("metadata", {}).get("annotations", {}).get(A_CONFIG_HASH) == digest:
            return live, False
        patch = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
        dropped = set(_selector(live)) - set(_selector(desired))
        if dropped:
            # A merge patch keeps the keys it does not name: a Service's selector that drops
            # one (a revision's pods -> the router's) names it as null, in the same write.
            selector = {**dict.fromkeys(dropped), **_selector(desired)}
            patch["spec"] = {**patch["spec"], "selector": selector}
        return self.patch(obj["kind"], meta["namespace"], meta["name"], patch), True


def _selector(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Service's selector (a flat map); {} for any other shape (a Deployment's is nested)."""
    selector = (obj.get("spec") or {}).get("selector") or {}
    return selector if all(isinstance(v, str) for v in selector.values()) else {}


def _with_annotation(obj: Mapping[str, Any], key: str, value: str) -> dict[str, Any]:
    meta = dict(obj["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), key: value}
    return {**obj, "metadata": meta}


def _message(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"").get("message", ""))
    except (TypeError, ValueError, AttributeError):
        return ""


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)
