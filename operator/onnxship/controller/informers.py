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

The ModelDeployments themselves are followed the same way (all of them, no label): a pass at
rest then sends no request at all. kopf watches them too and may see a change first; what it
saw goes into the cache when it is newer (``observe``), so a pass never acts on an object
older than what kopf or the operator's own last write saw.

Lists by owner read an index on the owner label: a pass's list costs its own children, not a
scan of every cached object (5 children each at 1,000 ModelDeployments).

What is cached of an object is what a pass reads of it (``KEEP``), as client-go's transform
functions do: 1.5 KiB of memory per child instead of 7 KiB with only managedFields and the
pod template dropped, 15 KiB as served (bench/scale_bench.py measures the process).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from kubernetes import client as k8s

log = logging.getLogger(__name__)

# Every object the operator makes carries this label (plan.workloads.labels).
SELECTOR = "onnxship.io/deployment"
# Objects per page of a listing (client-go's default).
LIST_PAGE = 500
# A watch the API server ends after this long (randomized so that kinds do not relist in step).
WATCH_SECONDS = (240, 360)
# How long a deleted object is not brought back by a late event about its past.
TOMBSTONE_SECONDS = 120.0
# A read waits this long for the first listing before it goes to the API server instead.
SYNC_WAIT_SECONDS = 30.0
# Where resourceVersions do not order changes (a mock server's: one version for all, or
# none), events about an object the operator just wrote are taken again once the write's own
# event came through (the watch delivers in order), at the latest after this long.
PENDING_WRITE_SECONDS = 5.0
# ...and the last few such events per object are remembered, for a write whose own event
# arrived before the write's answer was handled.
RECENT_EVENTS = 3
# What a pass reads of each kind besides metadata (reconcile.py, Kube.apply): the top-level
# fields kept, each with the keys kept under it (None: all of it). The rest of an object (a
# Deployment's pod template, its conditions with their messages and times, a Service's
# spec) stays on the server, as client-go's transform functions leave it: at 1,000
# ModelDeployments the caches hold 5,000 children, read for a few numbers and a hash each.
KEEP: dict[str, dict[str, tuple[str, ...] | None]] = {
    "Deployment": {
        "spec": ("replicas",),
        "status": ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas"),
    },
    "Service": {"spec": ("selector",)},  # what the user's Service selects: plan/front.py
    "ConfigMap": {"data": None},
    "Job": {"status": ("conditions", "succeeded", "failed", "active")},
}
# Of the metadata, what identifies, orders and owns an object.
KEEP_META = ("name", "namespace", "uid", "resourceVersion", "generation", "deletionTimestamp")
# Annotations are kept under this prefix only: the content hash, the command. Others, kopf's
# copy of the last spec it handled or kubectl's last-applied-configuration among them, are
# a second copy of the spec on every object.
OURS = "onnxship.io/"

Key = tuple[str, str]  # (namespace, name)
OnChange = Callable[[str, str, dict[str, Any]], None]  # (kind, event type, object)
OnRequest = Callable[[str, str, str], None]


def _newer(incoming: str, cached: str) -> bool:
    """resourceVersions are opaque; etcd's are increasing integers. When both are, an older
    one is refused; anything else (a mock server's) counts as newer, by arrival."""
    if incoming.isdigit() and cached.isdigit():
        return int(incoming) >= int(cached)
    return True


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _later(incoming: str, known: str) -> bool:
    """Strictly newer, by etcd's increasing integers; False when either is not one."""
    return incoming.isdigit() and known.isdigit() and int(incoming) > int(known)


def _unordered(incoming: str, cached: str | None) -> bool:
    """Whether these versions cannot tell which change came first: not etcd's increasing
    integers, or the same one for a changed object (a mock server's)."""
    if cached is None:
        return not incoming.isdigit()
    return not (incoming.isdigit() and cached.isdigit() and incoming != cached)


def _slim(
    obj: Mapping[str, Any], keep: Mapping[str, tuple[str, ...] | None] | None = None
) -> dict[str, Any]:
    """What the operator reads of an object: its identity, labels and our annotations, and
    the ``keep`` fields (None: every top-level field, as for a ModelDeployment). Never
    managedFields (most of an object's bytes). Label and annotation keys, the same on every
    child, are interned: each watch event's JSON brings its own copies."""
    meta = obj.get("metadata") or {}
    slim_meta: dict[str, Any] = {k: meta[k] for k in KEEP_META if k in meta}
    labels = meta.get("labels")
    if labels:
        slim_meta["labels"] = {
            sys.intern(k): sys.intern(v) if isinstance(v, str) else v for k, v in labels.items()
        }
    notes = {
        sys.intern(k): v for k, v in (meta.get("annotations") or {}).items() if k.startswith(OURS)
    }
    if notes:
        slim_meta["annotations"] = notes
    if keep is None:
        out = {k: v for k, v in obj.items() if k != "metadata"}
    else:
        out = {k: obj[k] for k in ("apiVersion", "kind") if k in obj}
        for field, keys in keep.items():
            value = obj.get(field)
            if isinstance(value, dict):
                out[field] = value if keys is None else {k: value[k] for k in keys if k in value}
    out["metadata"] = slim_meta
    return out


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
        selector: str | None = SELECTOR,
    ) -> None:
        """``selector``: a label the objects followed carry (None: every object of the kind)."""
        self.kind = kind
        self._selector = selector
        self._keep = KEEP.get(kind)
        self._api = api
        self._path = path  # namespace ("" = all) -> collection path
        self._namespaces = list(namespaces) or [""]
        self._on_change = on_change
        self._on_request = on_request
        self._objects: dict[Key, dict[str, Any]] = {}
        self._tombstones: dict[Key, float] = {}
        self._gone: set[Key] = set()  # deleted (a DELETED event) and not made again since
        self._pending: dict[Key, tuple[dict[str, Any], float]] = {}  # our last write, until
        self._recent: dict[Key, list[dict[str, Any]]] = {}  # unordered versions only
        self._by_owner: dict[Key, set[str]] = {}  # (namespace, owner label) -> names
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

    def gone(self, namespace: str, name: str) -> bool:
        """Deleted, as far as this cache knows (by the operator or by a watch event)."""
        key = (namespace, name)
        with self._lock:
            return key in self._gone or key in self._tombstones

    def list(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        with self._lock:
            owner = selector.get(SELECTOR)
            if owner is not None and self._selector == SELECTOR:
                names = self._by_owner.get((namespace, owner), ())
                objects = [self._objects[(namespace, n)] for n in names]
            else:
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
        slim = _slim(obj, self._keep)
        with self._lock:
            self._tombstones.pop(key, None)
            self._gone.discard(key)
            cached = self._objects.get(key)
            if not _unordered(_rv(slim), _rv(cached) if cached is not None else None):
                self._put(key, slim)  # resourceVersions decide
            elif slim not in self._recent.get(key, ()):
                self._set(key, slim)
                self._pending[key] = (slim, time.monotonic() + PENDING_WRITE_SECONDS)
            # else its own event came first: the cache holds it, or what came after it

    def observe(self, obj: Mapping[str, Any]) -> bool:
        """``obj`` as another watcher (kopf) saw it: kept when the cache has nothing of it yet
        or an older version by resourceVersion; never when versions do not tell (a mock's),
        since that copy may be older than the operator's last write. True when kept."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            if key in self._tombstones or key in self._gone:
                return False
            cached = self._objects.get(key)
            if cached is not None and not _later(_rv(obj), _rv(cached)):
                return False
            self._set(key, copy.deepcopy(_slim(obj, self._keep)))
            return True

    def replace(self, obj: Mapping[str, Any]) -> None:
        """``obj`` as just read from the API server, whatever the cache held (after a
        conflict: what the cache held may be a write the server refused)."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            self._pending.pop(key, None)
            self._recent.pop(key, None)
            self._set(key, _slim(obj, self._keep))

    def deleted(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._lock:
            self._drop(key)
            # The watch may have brought the deletion already: every event before it is in,
            # and a tombstone would drop the next object of that name (a re-create's ADDED).
            if key not in self._gone:
                self._tombstones[key] = time.monotonic() + TOMBSTONE_SECONDS

    def _put(self, key: Key, obj: dict[str, Any]) -> bool:
        """Keep ``obj`` (slimmed) unless the cache holds a newer version; True when kept."""
        cached = self._objects.get(key)
        if cached is not None:
            rv, old = _rv(obj), _rv(cached)
            if rv == old and cached == obj:
                return False  # this version (a mock server keeps one version for all)
            if not _newer(rv, old):
                return False  # an older one
        self._set(key, obj)
        return True

    def _set(self, key: Key, obj: dict[str, Any]) -> None:
        self._unindex(key)
        self._objects[key] = obj
        self._gone.discard(key)
        owner = (obj.get("metadata", {}).get("labels") or {}).get(SELECTOR)
        if owner is not None:
            self._by_owner.setdefault((key[0], owner), set()).add(key[1])

    def _drop(self, key: Key) -> dict[str, Any] | None:
        self._recent.pop(key, None)
        self._unindex(key)
        return self._objects.pop(key, None)

    def _unindex(self, key: Key) -> None:
        obj = self._objects.get(key)
        if obj is None:
            return
        owner = (obj.get("metadata", {}).get("labels") or {}).get(SELECTOR) or ""
        names = self._by_owner.get((key[0], owner))
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._by_owner[(key[0], owner)]

    def _after_write(self, key: Key, obj: dict[str, Any], now: float) -> bool:
        """Whether an event about ``key`` comes after the operator's last write of it (the
        write's own event, a newer version, or the wait is over); events come in order."""
        pending = self._pending.get(key)
        if pending is None:
            return True
        written, until = pending
        if obj == written or _later(_rv(obj), _rv(written)) or now > until:
            del self._pending[key]
            return True
        return False

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

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self._selector)] if self._selector else []

    def _selected(self, obj: Mapping[str, Any]) -> bool:
        """Some servers (mocks) ignore labelSelector: filter again."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return self._selector is None or self._selector in labels

    def _relist(self, namespace: str) -> str:
        # In pages, as client-go lists: the whole list's JSON and its parsed copy, before
        # slimming, were the operator's largest allocation at start-up (1,000 objects with
        # their managedFields at once). All pages are one snapshot (the first's version).
        fresh: dict[Key, dict[str, Any]] = {}
        version, token = "", ""
        while True:
            query = [*self._query(), ("limit", str(LIST_PAGE))]
            if token:
                query.append(("continue", token))
            resp = self._request_ns(namespace, "list", query, 60)
            resp.read()
            data = json.loads(resp.data)
            del resp  # its bytes, before the page is slimmed
            meta = data.get("metadata") or {}
            version = version or str(meta.get("resourceVersion", ""))
            for o in data.pop("items", None) or []:
                if self._selected(o):
                    key = (o["metadata"].get("namespace", ""), o["metadata"]["name"])
                    fresh[key] = _slim(o, self._keep)
            token = str(meta.get("continue") or "")
            if not token:
                break
        with self._lock:
            mine = {k: o for k, o in self._objects.items() if not namespace or k[0] == namespace}
            for key, old in mine.items():
                if key not in fresh:
                    # Gone since, unless written after this listing (by the operator).
                    old_rv = str(old["metadata"].get("resourceVersion", ""))
                    if not (old_rv.isdigit() and version.isdigit() and int(old_rv) > int(version)):
                        self._drop(key)
            now = time.monotonic()
            for key, obj in fresh.items():
                if self._after_write(key, obj, now):
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
            *self._query(),
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(seconds)),
        ]
        resp = self._request_ns(namespace, "watch", query, (10, seconds + 30))
        with self._lock:
            self._streams.add(resp.response)
        if self._stop.is_set():  # stopped while this watch was being opened
            resp.response.close()
            return ""
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
                self._pending.pop(key, None)
                changed = self._drop(key) is not None
                self._gone.add(key)
            elif key in self._tombstones or not self._selected(obj):
                changed = False  # an event from before the operator deleted it
            else:
                slim = _slim(obj, self._keep)
                cached = self._objects.get(key)
                changed = self._after_write(key, slim, now) and self._put(key, slim)
                if _unordered(_rv(slim), _rv(cached) if cached is not None else None):
                    self._recent[key] = [*self._recent.get(key, [])[-RECENT_EVENTS + 1 :], slim]
        if changed and self._on_change is not None:
            try:
                self._on_change(self.kind, kind, obj)
            except Exception:  # a waker must not end the watch
                log.exception("%s informer: on_change failed", self.kind)


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
