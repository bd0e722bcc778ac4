"""A small client of the router's admin endpoint, for shells that drive a router process."""

from __future__ import annotations

import json
import urllib.request

# The admin endpoint's path, here rather than in server.py: `import onnxship.router` (this
# client, the operator's metrics_source) must not load the server, its proxy and numpy.
ROUTES_PATH = "/onnxship/routes"


def admin_push(admin_url: str, routes_json: str, token: str = "", timeout: float = 2.0) -> bool:
    """PUT a route table (JSON text) to the router's admin port; True when it changed."""
    req = urllib.request.Request(
        admin_url.rstrip("/") + ROUTES_PATH,
        data=routes_json.encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return bool(json.loads(resp.read()).get("changed"))
