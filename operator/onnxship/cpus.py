"""The container's CPU quota, read from its cgroup: what `serve` and `route` size themselves by."""

from __future__ import annotations

from pathlib import Path


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs of the container's quota (``limits.cpu``), or None when it has none."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        q, period = (cgroup_root / "cpu.max").read_text().split()
        return None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        q1 = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        p1 = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return q1 / p1 if q1 > 0 and p1 > 0 else None
