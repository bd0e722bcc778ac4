"""Cluster DNS and kube-proxy, as far as onnxship's pods need them (e2e process node only).

The process node (``e2e/harness/process_node.py``) puts this folder first on the PYTHONPATH
of every Pod process it runs, so Python imports this module at start-up. It wraps
``socket.getaddrinfo`` (what asyncio's ``create_connection``, aiohttp's default resolver,
urllib and botocore all end up calling) for names under ``.svc`` / ``.svc.cluster.local``:
``<service>.<namespace>.svc`` and a Service port resolve to one ready endpoint of that
Service, picked at random for each lookup (as kube-proxy picks one per connection), with the
port translated to the endpoint's target port. The table is the JSON file named by
``E2E_SERVICES_FILE``, which the process node rewrites (atomically) from the API server's
Services and EndpointSlices, i.e. from what the real kube-controller-manager derives from
Pod readiness and addresses.

A Service with no ready endpoint resolves to an address nothing listens on (connection
refused, as kube-proxy's reject rule answers); an unknown Service is NXDOMAIN.

It also plays the Pod network: the API server refuses loopback addresses in EndpointSlices,
so Pods are reported with 198.18.x.y addresses (RFC 2544's benchmarking range, never a
real host) while their processes listen on 127.<a>.x.y; ``E2E_POD_NETWORK=198.18.=127.<a>.``
maps one to the other for whatever connects through ``getaddrinfo`` (urllib, http.client,
botocore; asyncio skips it for IP literals).
"""

from __future__ import annotations

import json
import os
import random
import socket
from typing import Any

_FILE = os.environ.get("E2E_SERVICES_FILE", "")
_SUFFIXES = (".svc.cluster.local", ".svc")
NO_ENDPOINT = "127.255.255.254"  # loopback, never a Pod IP: connections are refused
_POD, _, _LOCAL = os.environ.get("E2E_POD_NETWORK", "").partition("=")
_real_getaddrinfo = socket.getaddrinfo
_cache: dict[str, Any] = {"key": None, "table": {}}


def _table() -> dict[str, Any]:
    try:
        st = os.stat(_FILE)
    except OSError:
        return {}
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    if _cache["key"] != key:
        try:
            with open(_FILE, encoding="utf-8") as fh:
                _cache["table"] = json.load(fh)
            _cache["key"] = key
        except (OSError, ValueError):
            pass
    table: dict[str, Any] = _cache["table"]
    return table


def service_of(host: object) -> str | None:
    """``<service>.<namespace>`` for a cluster Service name, else None."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return None
    name = host.rstrip(".").lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name.count(".") >= 2:
            return name[: -len(suffix)]
    return None


def local(ip: str) -> str:
    """A Pod IP as the host reaches it."""
    return _LOCAL + ip[len(_POD) :] if _POD and ip.startswith(_POD) else ip


def getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[Any]:
    if isinstance(host, str) and _POD and host.startswith(_POD):
        return _real_getaddrinfo(local(host), port, family, type, proto, flags)
    service = service_of(host)
    if service is None or not _FILE:
        return _real_getaddrinfo(host, port, family, type, proto, flags)
    entry = _table().get(service)
    if entry is None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    if isinstance(port, bytes):
        port = port.decode()
    endpoints = entry.get(str(port), []) if port is not None else []
    ip, target = random.choice(endpoints) if endpoints else (NO_ENDPOINT, port or 0)
    return _real_getaddrinfo(
        local(ip), int(target), family, type, proto, flags | socket.AI_NUMERICHOST
    )


if _FILE or _POD:
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    # uvloop resolves names in libuv, past this wrapper (a real cluster's DNS answers it, this
    # stand-in cannot): the Pods' servers run on asyncio's loop here.
    os.environ.setdefault("ONNXSHIP_EVENT_LOOP", "asyncio")
