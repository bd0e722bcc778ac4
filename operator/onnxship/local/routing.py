"""The router of `onnxship up` (`onnxship route`, a child process) and its route table.

The table is a file the router watches (the cluster's ConfigMap); a push to the router's
admin endpoint makes a change immediate. ``split`` is what the router was last told, which
the plan observes as the traffic it serves.
"""

from __future__ import annotations

import logging
import secrets

from onnxship.api.routes import RouteTable
from onnxship.plan.traffic import TrafficSplit
from onnxship.router import admin_push

from . import processes
from .events import Say
from .options import UpOptions
from .processes import Child
from .state import DeploymentState, write_atomic

log = logging.getLogger("onnxship.local")


class RouterProcess:
    """The `onnxship route` child on the user's port, restarted if it dies."""

    def __init__(self, state: DeploymentState, options: UpOptions, say: Say) -> None:
        self.state = state
        self.options = options
        self.say = say
        self.endpoint = f"http://{options.host}:{options.port}"
        self.routes_path = state.dir / "routes.json"
        self.child: Child | None = None
        self.admin_url = ""
        self.admin_token = secrets.token_hex(16)
        self.env: dict[str, str] = {}
        self.split: TrafficSplit | None = None  # None until a split was routed

    def start(self) -> None:
        """An empty table first (nothing routed), then the router on the user's port."""
        self.routes_path.parent.mkdir(parents=True, exist_ok=True)
        self._write(RouteTable())
        admin_port = processes.free_port()
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.child = Child(
            role="router",
            args=[
                *processes.onnxship_command(),
                "route",
                "--host",
                self.options.host,
                "--port",
                str(self.options.port),
                "--routes",
                str(self.routes_path),
                "--admin-port",
                str(admin_port),
                "--watch-interval",
                "0.25",
            ],
            log_path=self.state.logs_dir / "router.log",
            ready_url=f"{self.endpoint}/healthz",
            ports={"http": self.options.port, "admin": admin_port},
        )
        self.env = {"ONNXSHIP_ROUTER_TOKEN": self.admin_token}
        self.child.start(self.env)

    def check(self) -> None:
        """Restart the router if it died; the table on disk brings its routes back."""
        router = self.child
        if router is None or router.alive():
            return
        self.say(
            "warning", f"router exited with {router.exit_code()}, restarting:\n{router.log_tail(5)}"
        )
        router.start(self.env)

    def route(self, table: RouteTable, split: TrafficSplit) -> None:
        """Serve ``table``, which carries ``split``."""
        self._write(table)
        self.split = split

    def stop(self) -> None:
        if self.child is not None:
            processes.stop_all([self.child])

    def pids(self) -> list[int]:
        return [self.child.pid] if self.child and self.child.alive() else []

    def _write(self, table: RouteTable) -> None:
        text = table.model_dump_json(by_alias=True, exclude_none=True, indent=2)
        write_atomic(self.routes_path, text)
        self._push(text)

    def _push(self, text: str) -> None:
        """The router watches the file; its admin endpoint makes the change immediate."""
        if self.child is None or not self.child.alive():
            return
        try:
            admin_push(self.admin_url, text, self.admin_token, timeout=2.0)
        except OSError as exc:  # the file stays the source of truth; the push is a shortcut
            log.debug("admin push failed: %s", exc)
