"""The ``prometheus`` analysis provider: PromQL over the Prometheus HTTP API.

The queries read the router's metrics (``router: builtin``), templated with the canary's
revision and the namespace, over a window of one analysis interval. ``increase()``
extrapolates, so counts are estimates; the verdict only needs rates and a quantile.
"""

from __future__ import annotations

from typing import Any

from onnxship.plan.analysis import AnalysisRequest, GenerationFigures, Measurements

from .metrics import (
    COMPARISONS,
    COSINE,
    DURATION,
    ITL,
    REQUESTS,
    TOKEN_AGREEMENT,
    TOKEN_COMPARISONS,
    TOP1,
    TTFT,
)


def promql_queries(revision: str, namespace: str, window: str) -> dict[str, str]:
    """The PromQL of each measurement, for ``revision`` over ``window`` (e.g. ``30s``)."""
    sel = f'revision="{_escape(revision)}"'
    if namespace:
        sel += f',namespace="{_escape(namespace)}"'
    return {
        "requests": f"sum(increase({REQUESTS}{{{sel}}}[{window}]))",
        "errors": f'sum(increase({REQUESTS}{{{sel},code=~"5.."}}[{window}]))',
        "p99_seconds": (
            f"histogram_quantile(0.99, sum by (le) "
            f"(rate({DURATION}_bucket{{{sel}}}[{window}])))"
        ),
        "comparisons": f"sum(increase({COMPARISONS}{{{sel}}}[{window}]))",
        "cosine_sum": f"sum(increase({COSINE}_sum{{{sel}}}[{window}]))",
        "top1": f"sum(increase({TOP1}{{{sel}}}[{window}]))",
        # causal LMs: the users' streams (timed, p99s) and mirrored generations
        "generations": f"sum(increase({TTFT}_count{{{sel}}}[{window}]))",
        "ttft_p99_seconds": _p99(TTFT, sel, window),
        "itl_p99_seconds": _p99(ITL, sel, window),
        "token_comparisons": f"sum(increase({TOKEN_COMPARISONS}{{{sel}}}[{window}]))",
        "token_agreement_sum": f"sum(increase({TOKEN_AGREEMENT}_sum{{{sel}}}[{window}]))",
    }


def environment_queries(revision: str, namespace: str, window: str) -> dict[str, str]:
    """Per environment (one series each): streams timed and their p99s."""
    sel = f'revision="{_escape(revision)}"'
    if namespace:
        sel += f',namespace="{_escape(namespace)}"'
    return {
        "generations": f"sum by (environment) (increase({TTFT}_count{{{sel}}}[{window}]))",
        "ttft_p99_seconds": _p99(TTFT, sel, window, "environment, "),
        "itl_p99_seconds": _p99(ITL, sel, window, "environment, "),
    }


def _p99(histogram: str, sel: str, window: str, by: str = "") -> str:
    rate = f"rate({histogram}_bucket{{{sel}}}[{window}])"
    return f"histogram_quantile(0.99, sum by ({by}le) ({rate}))"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def window_for(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


class PrometheusSource:
    """``plan.analysis.MetricsSource`` backed by a Prometheus server."""

    def __init__(self, address: str, session: Any, namespace: str = "") -> None:
        self.address = address.rstrip("/")
        self.session = session  # an aiohttp.ClientSession
        self.namespace = namespace

    async def query(self, promql: str) -> float | None:
        """The value of an instant vector query with at most one series; None when empty."""
        async with self.session.get(
            f"{self.address}/api/v1/query", params={"query": promql}
        ) as resp:
            doc = await resp.json()
        if doc.get("status") != "success":
            raise RuntimeError(f"prometheus: {doc.get('error', doc)} in {promql}")
        result = doc["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if value != value else value  # NaN: no data in the window

    async def query_by(self, promql: str, label: str) -> dict[str, float]:
        """An instant vector query's value per ``label``; NaN (no data) left out."""
        async with self.session.get(
            f"{self.address}/api/v1/query", params={"query": promql}
        ) as resp:
            doc = await resp.json()
        if doc.get("status") != "success":
            raise RuntimeError(f"prometheus: {doc.get('error', doc)} in {promql}")
        out = {}
        for series in doc["data"]["result"]:
            value = float(series["value"][1])
            if value == value:
                out[series["metric"].get(label, "")] = value
        return out

    async def generation_environments(
        self, request: AnalysisRequest, window: str
    ) -> tuple[GenerationFigures, ...]:
        """The pools' own figures, when the canary's streams were timed in several."""
        queries = environment_queries(request.revision, self.namespace, window)
        by_env = {name: await self.query_by(q, "environment") for name, q in queries.items()}
        envs = sorted(e for e in by_env["generations"] if e)
        if len(envs) < 2:
            return ()

        def ms(name: str, env: str) -> float | None:
            seconds = by_env[name].get(env)
            return seconds * 1000 if seconds is not None else None

        return tuple(
            GenerationFigures(
                env,
                round(by_env["generations"][env]),
                ms("ttft_p99_seconds", env),
                ms("itl_p99_seconds", env),
            )
            for env in envs
        )

    async def measure(self, request: AnalysisRequest) -> Measurements | None:
        window = window_for(request.interval_seconds)
        queries = promql_queries(request.revision, self.namespace, window)
        values = {name: await self.query(q) for name, q in queries.items()}
        requests = values["requests"]
        if requests is None:
            return Measurements(request.revision, interval_seconds=request.interval_seconds)
        comparisons = round(values["comparisons"] or 0.0)
        generations = round(values["generations"] or 0.0)
        token_comparisons = round(values["token_comparisons"] or 0.0)
        p99 = values["p99_seconds"]
        # Queries run one after another and extrapolate: keep errors within requests.
        errors = min(round(values["errors"] or 0.0), round(requests))
        return Measurements(
            revision=request.revision,
            requests=round(requests),
            errors=errors,
            latency_p99_ms=p99 * 1000 if p99 is not None else None,
            comparisons=comparisons,
            cosine=(values["cosine_sum"] or 0.0) / comparisons if comparisons else None,
            top1=(values["top1"] or 0.0) / comparisons if comparisons else None,
            interval_seconds=request.interval_seconds,
            generations=generations,
            ttft_p99_ms=_ms(values["ttft_p99_seconds"]) if generations else None,
            itl_p99_ms=_ms(values["itl_p99_seconds"]) if generations else None,
            generation_environments=(
                await self.generation_environments(request, window) if generations else ()
            ),
            token_comparisons=token_comparisons,
            token_agreement=(
                (values["token_agreement_sum"] or 0.0) / token_comparisons
                if token_comparisons
                else None
            ),
        )


def _ms(seconds: float | None) -> float | None:
    return seconds * 1000 if seconds is not None else None
