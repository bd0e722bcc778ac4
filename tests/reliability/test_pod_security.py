"""Every pod the operator asks for meets the restricted Pod Security Standard.

A namespace labelled ``pod-security.kubernetes.io/enforce: restricted`` rejects a pod that
does not: a compression Job would never start, a model server never come up. The checker
(tests/helpers/pod_security.py, shared with the chart's and the builders' tests) is first
shown to catch each rule broken, then run over every version of every Job and Deployment
(revisions, router) the operator wrote during a full run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from onnxship.api import parse_spec
from onnxship.plan import workloads as w
from tests.controller.conftest import Cluster
from tests.controller.scenarios import full_run
from tests.helpers.pod_security import assert_restricted, pod_spec_of, restricted_violations

OWNER = w.Owner(name="enc", namespace="default", uid="u-1")
STORE = w.StoreRef("s3://art/team/", credentials_secret="s3-creds")


def good_job() -> dict[str, Any]:
    spec = parse_spec({"model": {"uri": "s3://m/model.onnx"}})
    env = spec.serving.effective_environments()[0]
    return w.compress_job(OWNER, spec, "enc-r1", env, STORE, w.Runtime(image="img"))


def pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(job: dict[str, Any]) -> dict[str, Any]:
    return pod(job)["containers"][0]  # type: ignore[no-any-return]


def drop_pod_non_root(j: dict[str, Any]) -> None:
    pod(j)["securityContext"].pop("runAsNonRoot")
    container(j)["securityContext"].pop("runAsNonRoot")


def drop_seccomp(j: dict[str, Any]) -> None:
    pod(j)["securityContext"].pop("seccompProfile")
    container(j)["securityContext"].pop("seccompProfile")


BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "hostNetwork": lambda j: pod(j).update(hostNetwork=True),
    "hostPID": lambda j: pod(j).update(hostPID=True),
    "hostIPC": lambda j: pod(j).update(hostIPC=True),
    "privileged": lambda j: container(j)["securityContext"].update(privileged=True),
    "allowPrivilegeEscalation true": lambda j: container(j)["securityContext"].update(
        allowPrivilegeEscalation=True
    ),
    "allowPrivilegeEscalation unset": lambda j: container(j)["securityContext"].pop(
        "allowPrivilegeEscalation"
    ),
    "runAsNonRoot false in a container": lambda j: container(j)["securityContext"].update(
        runAsNonRoot=False
    ),
    "runAsNonRoot nowhere": drop_pod_non_root,
    "runAsUser 0": lambda j: container(j)["securityContext"].update(runAsUser=0),
    "seccomp Unconfined": lambda j: pod(j)["securityContext"].update(
        seccompProfile={"type": "Unconfined"}
    ),
    "seccomp nowhere": drop_seccomp,
    "capabilities not dropped": lambda j: container(j)["securityContext"].update(
        capabilities={"drop": []}
    ),
    "capability SYS_ADMIN added": lambda j: container(j)["securityContext"].update(
        capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    ),
    "hostPath volume": lambda j: pod(j)["volumes"].append(
        {"name": "h", "hostPath": {"path": "/var/run"}}
    ),
    "nfs volume": lambda j: pod(j)["volumes"].append(
        {"name": "n", "nfs": {"server": "x", "path": "/"}}
    ),
    "hostPort": lambda j: container(j).update(ports=[{"containerPort": 80, "hostPort": 80}]),
    "sysctls": lambda j: pod(j)["securityContext"].update(
        sysctls=[{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]
    ),
    "SELinux type spc_t": lambda j: pod(j)["securityContext"].update(
        seLinuxOptions={"type": "spc_t"}
    ),
    "procMount Unmasked": lambda j: container(j)["securityContext"].update(procMount="Unmasked"),
    "an init container without the context": lambda j: pod(j).update(
        initContainers=[{"name": "init", "image": "busybox"}]
    ),
}


@pytest.mark.parametrize("rule", sorted(BREAKS))
def test_the_checker_catches_each_broken_rule(rule: str) -> None:
    job = good_job()
    assert restricted_violations(pod(job)) == []
    broken = copy.deepcopy(job)
    BREAKS[rule](broken)
    assert restricted_violations(pod(broken)), f"{rule} passed the checker"
    with pytest.raises(AssertionError, match="restricted Pod Security Standard"):
        assert_restricted(broken)


def test_the_checker_allows_what_the_profile_allows() -> None:
    job = good_job()
    container(job)["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    pod(job)["securityContext"]["seccompProfile"] = {"type": "Localhost", "localhostProfile": "p"}
    pod(job)["volumes"].append({"name": "s", "secret": {"secretName": "s"}})
    assert restricted_violations(pod(job)) == []


async def test_every_pod_the_operator_creates_is_restricted(
    cluster: Cluster, operator: Any
) -> None:
    async with operator():
        seen = await full_run(cluster)
    checked: dict[str, int] = {}
    for (res, _ns, name), obj in list(cluster.server.objects.items()):
        if getattr(res, "plural", "") not in ("jobs", "deployments"):
            continue
        for version in obj.history:
            if version is None or "template" not in (version.raw.get("spec") or {}):
                continue
            assert restricted_violations(pod_spec_of(version.raw)) == [], (name, version.raw)
            checked[f"{res.plural}/{name}"] = checked.get(f"{res.plural}/{name}", 0) + 1
    # What a full run makes: Jobs for 2 environments of v1, v2, v3 and the gateway model,
    # model servers of each served revision and environment, and the router.
    jobs = [k for k in checked if k.startswith("jobs/")]
    deployments = [k for k in checked if k.startswith("deployments/")]
    assert len(jobs) >= 6 and len(seen["failed_jobs"]) == 2, (jobs, seen)
    assert "deployments/enc-router" in deployments
    assert any(d.endswith("-cpu") for d in deployments) and any(
        d.endswith("-gpu") for d in deployments
    )
    assert seen["httproutes"], "the Gateway API model ran"
    print(f"checked {sum(checked.values())} versions of {len(checked)} objects")
