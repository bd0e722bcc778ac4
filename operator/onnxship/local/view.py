"""What a user sees of a local deployment: the live view of `up` and `onnxship status`.

Both render the same thing from the same data (the persisted status and the runtime file
that `up` rewrites every tick), so the two terminals never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from onnxship.api import ModelDeploymentSpec, ModelDeploymentStatus, RevisionStatus

_PHASE_STYLE = {
    "Ready": "bold green",
    "Progressing": "bold cyan",
    "Paused": "bold yellow",
    "Compressing": "bold magenta",
    "Degraded": "bold red",
    "Pending": "dim",
}


@dataclass
class RevisionStats:
    """Live counters of one revision, from the router's metrics."""

    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    mirrored: int = 0
    ttft_p99_ms: float | None = None  # generations: users' streams at the router
    token_agreement: float | None = None  # mirrored generations against stable's

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "p50Ms": self.p50_ms,
            "p99Ms": self.p99_ms,
            "mirrored": self.mirrored,
            "ttftP99Ms": self.ttft_p99_ms,
            "tokenAgreement": self.token_agreement,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RevisionStats:
        return cls(
            int(raw.get("requests", 0)),
            int(raw.get("errors", 0)),
            raw.get("p50Ms"),
            raw.get("p99Ms"),
            int(raw.get("mirrored", 0)),
            raw.get("ttftP99Ms"),
            raw.get("tokenAgreement"),
        )


@dataclass
class Snapshot:
    """Everything the view shows, gathered in one place."""

    name: str
    status: ModelDeploymentStatus
    spec: ModelDeploymentSpec | None = None
    endpoint: str = ""
    running: bool = False
    stats: dict[str, RevisionStats] = field(default_factory=dict)
    processes: dict[str, str] = field(
        default_factory=dict
    )  # revision -> "ready" | "starting" | ...
    activity: str = ""  # e.g. "compressing encoder-1a2b3c (quantize)"
    problem: str = ""  # a spec file that does not parse, a child that crashed
    events: list[str] = field(default_factory=list)  # the latest events, oldest first


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


def _role(status: ModelDeploymentStatus, rev: str) -> str:
    if rev == status.stable_revision and rev == status.canary_revision:
        return "stable"
    if rev == status.stable_revision:
        return "stable"
    if rev == status.canary_revision:
        return "canary"
    return ""


def weights(status: ModelDeploymentStatus) -> dict[str, int]:
    """Share of user traffic per revision, as the status says."""
    out: dict[str, int] = {}
    canary = status.canary_revision
    if status.stable_revision:
        out[status.stable_revision] = 100 - (status.canary_weight if canary else 0)
    if canary and canary != status.stable_revision:
        out[canary] = status.canary_weight
    if not status.stable_revision and canary:
        out[canary] = 100
    return out


def revision_table(snap: Snapshot) -> Table:
    status = snap.status
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("revision", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("weight", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("accuracy", justify="right", no_wrap=True)
    table.add_column("process", no_wrap=True)
    table.add_column("requests", justify="right", no_wrap=True)
    table.add_column("errors", justify="right", no_wrap=True)
    table.add_column("p50", justify="right", no_wrap=True)
    # Causal LMs: the variant compress chose, and the generations' own figures.
    variants = {rev.name: _variant(rev) for rev in status.revisions}
    llm = any(variants.values()) or any(
        st.ttft_p99_ms is not None or st.token_agreement is not None
        for st in snap.stats.values()
    )
    if llm:
        table.add_column("variant", no_wrap=True)
        table.add_column("ttft p99", justify="right", no_wrap=True)
        table.add_column("tokens", justify="right", no_wrap=True)
    w = weights(status)
    for rev in status.revisions:
        st = snap.stats.get(rev.name, RevisionStats())
        role = _role(status, rev.name)
        if rev.name == status.canary_revision and status.aborted:
            role = "aborted"
        requests = str(st.requests)
        if st.mirrored:
            requests += f" +{st.mirrored} mirrored"
        extra = []
        if llm:
            extra = [
                variants[rev.name] or "-",
                f"{st.ttft_p99_ms:.0f} ms" if st.ttft_p99_ms is not None else "-",
                f"{st.token_agreement:.3f}" if st.token_agreement is not None else "-",
            ]
        table.add_row(
            rev.name,
            rev.model_version or "-",
            Text(
                role, style={"stable": "green", "canary": "cyan", "aborted": "red"}.get(role, "dim")
            ),
            f"{w[rev.name]}%" if rev.name in w else "-",
            _size(rev),
            f"{rev.accuracy:.4f}" if rev.accuracy is not None else "-",
            snap.processes.get(rev.name, "-"),
            requests,
            f"{st.errors} ({st.errors / max(1, st.requests + st.mirrored):.0%})"
            if st.errors
            else "0",
            f"{st.p50_ms:.1f} ms" if st.p50_ms is not None else "-",
            *extra,
        )
    return table


def _variant(rev: RevisionStatus) -> str:
    return next((e.compression.variant for e in rev.environments if e.compression), "")


def _size(rev: RevisionStatus) -> str:
    original = 0
    for env in rev.environments:
        if env.compression and env.compression.original_bytes:
            original = env.compression.original_bytes
            break
    if original and rev.size_bytes:
        return f"{original / 1e6:.1f}→{_mb(rev.size_bytes)}"
    return _mb(rev.size_bytes)


def header(snap: Snapshot) -> Text:
    status = snap.status
    text = Text()
    text.append(f"{snap.name}  ", style="bold")
    text.append(str(status.phase), style=_PHASE_STYLE.get(str(status.phase), ""))
    steps = len(snap.spec.rollout.steps) if snap.spec else 0
    if status.canary_revision and status.aborted:
        text.append(f"  canary {status.canary_revision} aborted", style="red")
    elif status.canary_revision and status.stable_revision:
        if steps:
            text.append(f"  step {min(status.current_step + 1, steps)}/{steps}")
        text.append(f"  canary weight {status.canary_weight}%")
        if status.mirror_percent:
            text.append(f"  mirror {status.mirror_percent}%")
        if status.paused:
            text.append("  paused (onnxship promote | resume | abort)", style="yellow")
    if snap.endpoint:
        text.append(f"  {snap.endpoint}", style="underline")
    if not snap.running:
        text.append("  (not running: start it with `onnxship up FILE`)", style="dim")
    return text


def render(snap: Snapshot) -> RenderableType:
    """The whole view: header, message, analysis, revisions, activity, problems."""
    parts: list[RenderableType] = [header(snap)]
    status = snap.status
    if status.message:
        parts.append(Text(status.message, style="dim"))
    if status.analysis and status.analysis.verdict:
        a = status.analysis
        line = Text("analysis: ")
        line.append(a.verdict, style={"pass": "green", "fail": "red"}.get(a.verdict, "yellow"))
        figures = []
        if a.error_rate is not None:
            figures.append(f"error rate {a.error_rate:.1%}")
        if a.latency_p99_ms is not None:
            figures.append(f"p99 {a.latency_p99_ms:.1f} ms")
        if a.time_to_first_token_p99_ms is not None:
            figures.append(f"time to first token p99 {a.time_to_first_token_p99_ms:.0f} ms")
        if a.inter_token_latency_p99_ms is not None:
            figures.append(f"inter-token p99 {a.inter_token_latency_p99_ms:.1f} ms")
        if a.output_agreement is not None:
            figures.append(f"agreement {a.output_agreement:.3f}")
        figures.append(f"{a.requests} requests")
        if a.failures:
            figures.append(f"{a.failures} failed checks")
        line.append("  " + ", ".join(figures))
        if a.message:
            line.append(f"  {a.message}", style="dim")
        parts.append(line)
    if status.revisions:
        parts.append(revision_table(snap))
    if snap.activity:
        parts.append(Text(snap.activity, style="magenta"))
    if snap.problem:
        parts.append(Text(snap.problem, style="bold red"))
    parts.extend(Text(event, style="dim") for event in snap.events)
    return Group(*parts)
