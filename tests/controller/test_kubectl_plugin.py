"""`kubectl onnxship ...` against the mock API server, with the operator taking the commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from onnxship.cli.kubectl import plugin

from .conftest import Cluster
from .test_lifecycle import start_canary, status, traffic


def kubeconfig(tmp_path: Path, url: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "mock",
                "clusters": [{"name": "mock", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "test"}}],
                "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "u"}}],
            }
        )
    )
    return str(path)


async def kubectl(config: str, *args: str) -> Any:
    # The plugin blocks while it waits; the mock server needs this loop meanwhile.
    return await asyncio.to_thread(
        CliRunner().invoke, plugin, list(args), env={"KUBECONFIG": config}
    )


async def test_promote_from_kubectl(cluster: Cluster, operator: Any, tmp_path: Path) -> None:
    config = kubeconfig(tmp_path, str(cluster.server.url))
    steps = {"rollout": {"steps": [{"setWeight": 10}, {"pause": {}}]}}
    async with operator():
        _v1, v2 = await start_canary(cluster, steps)
        await cluster.wait_for(lambda: status(cluster).get("phase") == "Paused", what="paused")

        shown = await kubectl(config, "status", "enc")
        assert shown.exit_code == 0, shown.output
        assert "Paused" in shown.output and v2 in shown.output

        result = await kubectl(config, "promote", "enc", "-n", "default", "--wait", "20")
        assert result.exit_code == 0, result.output
        assert "promote sent to default/enc" in result.output
        await cluster.wait_for(lambda: traffic(cluster) == {v2: 100}, what="promoted to 100%")

        missing = await kubectl(config, "abort", "nope", "--wait", "0")
        assert missing.exit_code == 8 and "default/nope not found" in missing.output
