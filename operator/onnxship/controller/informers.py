"""Shared informers: one list + watch per kind the operator owns, kept in memory.

A reconcile pass used to read every child it cares about from the API server (a list of
Deployments, a GET per Service, ConfigMap, router Deployment): six requests per object per
pass at rest, 100 requests a second at 1,000 ModelDeployments on a one-minute resync. The
informers read each kind once (label-selected on the server: only what onnxship made) and
follow it with a watch; passes read the cache, so a pass at rest costs the ModelDeployment's
own GET and nothing else.

Staleness is what an informer trades for that, and the shell tolerates it: the operator's
own writes go into the cache at once (write-through, guarded by resourceVersion so that an
older watch event does not undo them), a create that the cache did not know about answers
409 and becomes a patch, and what the cluster's controllers change arrives as an event that
also wakes the owner. Until a kind has been listed once, reads go to the API server.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from kubernetes import client as k8s

log = logging.getLogger(__name__)

# Every object the operator makes carries this label (plan.workloads.labels).
SELECTOR = "onnxship.io/deployment"
# A watch the API server ends after this long (randomized so that kinds do not relist in step).
WATCH_SECONDS = (240, 360)
# How long a deleted object is not brought back by a late event about its past.
TOMBSTONE_SECONDS = 120.0
# A read waits this long for the first listing before it goes to the API server instead.
SYNC_WAIT_SECONDS = 30.0

Key = tuple[str, str]  # (namespace, name)
OnChange = Callable[[str, str, dict[str, Any]], None]  # (kind, event type, object)
OnRequest = Callable[[str, str, str], None]


def _newer(incoming: str, cached: str) -> bool:
    """resourceVersions are opaque; etcd's are increasing integers. When both are, an older
    one is refused; anything else (a mock server's) counts as newer, by arrival."""
    if incoming.isdigit() and cached.isdigit():
        return int(incoming) >= int(cached)
    return True


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What the operator reads of an object, without managedFields (most of its bytes)."""
    meta = obj.get("metadata") or {}
    if "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


class Informer:
    """One kind in some namespaces (or all: ``[""]``), kept by a watch thread per namespace."""

    def __init__(
        self,
        api: k8s.ApiClient,
        kind: str,
        path: Callable[[str], str],
        namespaces: Iterable[str],
        on_change: OnChange | None = None,
        on_request: OnRequest | None = None,
    ) -> None:
        self.kind = kind
        self._api = api
        self._path = path  # namespace ("" = all) -> collection path
        self._namespaces = list(namespaces) or [""]
        self._on_change = on_change
        self._on_request = on_request
        self._objects: dict[Key, dict[str, Any]] = {}
        self._tombstones: dict[Key, float] = {}
        self._lock = threading.Lock()
        self._listed: set[str] = set()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: set[Any] = set()  # open watch responses, closed by stop()

    # ------------------------------------------------------------------ reads

    def wait_synced(self, timeout: float = SYNC_WAIT_SECONDS) -> bool:
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def covers(self, namespace: str) -> bool:
        return "" in self._namespaces or namespace in self._namespaces

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def list(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        with self._lock:
            objects = [o for (ns, _), o in self._objects.items() if ns == namespace]
        return [
            o
            for o in objects
            if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        ]

    # ------------------------------------------------------------------ writes

    def wrote(self, obj: Mapping[str, Any]) -> None:
        """The operator created or patched ``obj``: the API server's answer is the newest."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            self._tombstones.pop(key, None)
            self._put(key, dict(obj))

    def deleted(self, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((namespace, name), None)
            self._tombstones[(namespace, name)] = time.monotonic() + TOMBSTONE_SECONDS

    def _put(self, key: Key, obj: dict[str, Any]) -> bool:
        """Keep ``obj`` unless the cache holds a newer version; True when it was kept."""
        cached = self._objects.get(key)
        rv = str(obj.get("metadata", {}).get("resourceVersion", ""))
        if cached is not None:
            old = str(cached.get("metadata", {}).get("resourceVersion", ""))
            if (rv and rv == old) or not _newer(rv, old):
                return False  # this version, or an older one (a mock server has none)
        self._objects[key] = _slim(obj)
        return True

    # ------------------------------------------------------------------ the watch

    def start(self) -> None:
        for ns in self._namespaces:
            name = f"informer-{self.kind}-{ns or 'all'}"
            t = threading.Thread(target=self._run, args=(ns,), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """End the watches now: a watch left open would keep its server from shutting down."""
        self._stop.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            try:
                stream.shutdown()  # unblocks the thread reading it
                stream.close()
            except Exception:  # already closed
                pass

    def _run(self, namespace: str) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                version = self._relist(namespace)
                backoff = 1.0
                while not self._stop.is_set() and version:
                    version = self._watch(namespace, version)
            except Exception as exc:  # the API server restarting, a network blip: relist
                if self._stop.is_set():
                    return
                log.warning("%s informer (%s): %s; relisting", self.kind, namespace or "all", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _relist(self, namespace: str) -> str:
        resp = self._request_ns(namespace, "list", [("labelSelector", SELECTOR)], 60)
        resp.read()
        data = json.loads(resp.data)
        version = str((data.get("metadata") or {}).get("resourceVersion", ""))
        fresh = {
            (o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
            for o in data.get("items") or []
            if _selected(o)
        }
        with self._lock:
            mine = {k: o for k, o in self._objects.items() if not namespace or k[0] == namespace}
            for key, old in mine.items():
                if key not in fresh:
                    # Gone since, unless written after this listing (by the operator).
                    old_rv = str(old["metadata"].get("resourceVersion", ""))
                    if not (old_rv.isdigit() and version.isdigit() and int(old_rv) > int(version)):
                        del self._objects[key]
            for key, obj in fresh.items():
                self._put(key, obj)
            self._listed.add(namespace)
            if all(ns in self._listed for ns in self._namespaces):
                self._synced.set()
        log.debug("%s informer (%s): %d listed", self.kind, namespace or "all", len(fresh))
        return version or "0"

    def _request_ns(
        self, namespace: str, verb: str, query: list[tuple[str, str]], timeout: Any
    ) -> Any:
        if self._on_request:
            self._on_request(verb, self.kind, "")
        method, url, headers, _, _ = self._api.param_serialize(
            "GET",
            self._path(namespace),
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        resp = self._api.call_api(method, url, header_params=headers, _request_timeout=timeout)
        if resp.status >= 400:
            resp.read()
            raise RuntimeError(f"{verb} {self.kind} answered {resp.status}: {resp.data[:200]!r}")
        return resp

    def _watch(self, namespace: str, version: str) -> str:
        """Follow changes from ``version``; the version to go on from, "" to relist."""
        seconds = random.randint(*WATCH_SECONDS)
        query = [
            ("labelSelector", SELECTOR),
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(seconds)),
        ]
        resp = self._request_ns(namespace, "watch", query, (10, seconds + 30))
        with self._lock:
            self._streams.add(resp.response)
        try:
            for line in _lines(resp.response):
                if self._stop.is_set():
                    return ""
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    # 410 Gone: the version is too old to watch from; anything else: relist too.
                    log.info("%s informer (%s): %s", self.kind, namespace or "all", obj)
                    return ""
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                if kind == "BOOKMARK":
                    version = rv or version
                    continue
                if rv:
                    version = rv
                self._apply_event(str(kind), obj)
        finally:
            with self._lock:
                self._streams.discard(resp.response)
            resp.response.release_conn()
        return version

    def _apply_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        now = time.monotonic()
        with self._lock:
            if self._tombstones:
                self._tombstones = {k: t for k, t in self._tombstones.items() if t > now}
            if kind == "DELETED":
                self._tombstones.pop(key, None)
                changed = self._objects.pop(key, None) is not None
            elif key in self._tombstones or not _selected(obj):
                changed = False  # an event from before the operator deleted it
            else:
                changed = self._put(key, obj)
        if changed and self._on_change is not None:
            try:
                self._on_change(self.kind, kind, obj)
            except Exception:  # a waker must not end the watch
                log.exception("%s informer: on_change failed", self.kind)


def _selected(obj: Mapping[str, Any]) -> bool:
    """Some servers (mocks) ignore labelSelector: filter again."""
    return SELECTOR in ((obj.get("metadata") or {}).get("labels") or {})


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-separated JSON events of a watch response, as they arrive."""
    pending = b""
    for chunk in response.stream(64 * 1024, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending
