"""A small JSON client for the tests' own calls (as cluster-admin or as any token).

It is the `kubernetes` package's ApiClient used raw, like the operator's ``Kube``: the tests
see every status code, message and ``Warning`` header the API server sends, which the typed
clients hide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client as k8s

T = TypeVar("T")


@dataclass
class Response:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("message", ""))
        return str(self.body or "")

    @property
    def warnings(self) -> list[str]:
        raw = self.headers.get("Warning") or self.headers.get("warning") or ""
        return [w.strip() for w in raw.split(",") if w.strip()] if raw else []


class ApiError(AssertionError):
    def __init__(self, method: str, path: str, response: Response) -> None:
        super().__init__(f"{method} {path} answered {response.status}: {response.message}")
        self.response = response


class Api:
    def __init__(self, server: str, ca_file: str, token: str) -> None:
        cfg = k8s.Configuration(host=server)
        cfg.ssl_ca_cert = ca_file
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        self.server, self.ca_file, self.token = server, ca_file, token
        self._client = k8s.ApiClient(cfg)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
        accept: str = "application/json",
    ) -> Response:
        method, url, headers, body, _ = self._client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params={"Accept": accept, "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self._client.call_api(
                method, url, header_params=headers, body=body, _request_timeout=timeout
            )
            resp.read()
            status, data, hdrs = resp.status, resp.data, resp.getheaders()
        except k8s.ApiException as exc:
            status, data, hdrs = exc.status or 0, exc.body, exc.headers or {}
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data.decode() if isinstance(data, bytes) else data
        return Response(status, parsed, dict(hdrs or {}))

    def must(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        resp = self.request(method, path, body, **kw)
        if not resp.ok:
            raise ApiError(method, path, resp)
        return resp.body

    def get(self, path: str) -> Any | None:
        resp = self.request("GET", path)
        if resp.status == 404:
            return None
        if not resp.ok:
            raise ApiError("GET", path, resp)
        return resp.body

    def items(self, path: str, selector: str = "") -> list[dict[str, Any]]:
        query = {"labelSelector": selector} if selector else None
        return list(self.must("GET", path, query=query).get("items", []))

    def create(self, path: str, obj: Mapping[str, Any], **query: str) -> Any:
        return self.must("POST", path, dict(obj), query=query or None)

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Any:
        return self.must("PATCH", path, dict(patch), content_type="application/merge-patch+json")

    def delete(self, path: str, **body: Any) -> bool:
        resp = self.request("DELETE", path, body or None)
        if resp.status == 404:
            return False
        if not resp.ok:
            raise ApiError("DELETE", path, resp)
        return True


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 60.0, what: str = "", every: float = 0.2
) -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except ApiError as exc:  # a passing API error while things settle
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(every)
