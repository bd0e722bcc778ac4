"""The restricted Pod Security Standard, checked the way the API server's admission checks it.

https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted, which
includes baseline). One checker for every pod template the project makes: the operator's own
(the Helm chart) and what the operator creates (compression Jobs, model servers, routers).
It returns the violations, so a test can show that it catches each one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Restricted: volume types a pod may use (no hostPath, nfs, iscsi, ... ).
ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}
ALLOWED_APPARMOR = {"RuntimeDefault", "Localhost"}
ALLOWED_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t",
                         "container_engine_t"}  # fmt: skip
VOLUME_KEYS_NOT_TYPES = {"name"}  # every other key of a volume names its type


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec of a Pod, a workload (Deployment, StatefulSet, Job ...) or a CronJob."""
    if obj.get("kind") == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    spec = obj["spec"]
    if obj.get("kind") == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(key) or []:
            yield f"{key}[{c.get('name', '?')}]", c


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """What in ``pod`` (a pod spec) the restricted profile forbids; empty when it passes."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}

    # baseline: host namespaces, host paths and ports, privileged, capabilities, sysctls...
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"spec.{field} is true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess is true")
    if psc.get("sysctls"):
        out.append(f"securityContext.sysctls set: {psc['sysctls']}")
    for v in pod.get("volumes") or []:
        types = set(v) - VOLUME_KEYS_NOT_TYPES
        if not types <= ALLOWED_VOLUMES:
            out.append(f"volume {v.get('name')}: type {sorted(types - ALLOWED_VOLUMES)}")
    _selinux(psc.get("seLinuxOptions"), "securityContext", out)
    _apparmor(psc.get("appArmorProfile"), "securityContext", out)

    # restricted: non-root, seccomp, no privilege escalation, capabilities dropped
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        out.append(f"securityContext.seccompProfile.type {pod_seccomp}")
    if psc.get("runAsUser") == 0:
        out.append("securityContext.runAsUser is 0")
    containers = list(_containers(pod))
    if not containers:
        out.append("no containers")
    for where, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: windowsOptions.hostProcess")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount {sc['procMount']}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{where}: hostPort {p['hostPort']}")
        _selinux(sc.get("seLinuxOptions"), where, out)
        _apparmor(sc.get("appArmorProfile"), where, out)
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            out.append(f"{where}: runAsNonRoot is not true (here or on the pod)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in ALLOWED_SECCOMP:
            out.append(f"{where}: seccompProfile.type {seccomp}")
        if seccomp is None and pod_seccomp is None:
            out.append(f"{where}: no seccompProfile (here or on the pod)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities.drop lacks ALL")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            out.append(f"{where}: capabilities.add {sorted(added)}")
    return out


def _selinux(options: Mapping[str, Any] | None, where: str, out: list[str]) -> None:
    if not options:
        return
    if options.get("type", "") not in ALLOWED_SELINUX_TYPES:
        out.append(f"{where}: seLinuxOptions.type {options['type']}")
    for key in ("user", "role"):
        if options.get(key):
            out.append(f"{where}: seLinuxOptions.{key} set")


def _apparmor(profile: Mapping[str, Any] | None, where: str, out: list[str]) -> None:
    if profile and profile.get("type") not in ALLOWED_APPARMOR:
        out.append(f"{where}: appArmorProfile.type {profile.get('type')}")


def assert_restricted(obj: Mapping[str, Any]) -> None:
    """``obj`` (a Pod or a workload) passes the restricted profile."""
    problems = restricted_violations(pod_spec_of(obj))
    name = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    assert not problems, f"{name} breaks the restricted Pod Security Standard: {problems}"
