"""The compact result of a compression: what a Job leaves in its termination message and
what the operator records, whether the artifact was just made or found in the store."""

from __future__ import annotations

import json
from typing import Any

from onnxship.api import ArtifactManifest

# A Pod's termination message holds at most 4 KiB.
RESULT_LIMIT = 4000


def compact_result(
    manifest: ArtifactManifest, artifact_uri: str, cache_hit: bool
) -> dict[str, Any]:
    """``{ok, cacheHit, artifactUri, cacheKey, kind, variant, report}``; per-prompt figures,
    the candidates' details, notes and step times are dropped first when the document would
    not fit in a termination message."""
    doc: dict[str, Any] = {
        "ok": True,
        "cacheHit": cache_hit,
        "artifactUri": artifact_uri,
        "cacheKey": manifest.cache_key,
        "kind": str(manifest.kind),
        "variant": next((c.name for c in manifest.report.candidates if c.chosen), ""),
        "report": manifest.report.to_wire(),
    }
    report = doc["report"]
    for extra in ("perPrompt", "candidates", "notes", "stepSeconds", "steps"):
        if len(json.dumps(doc, separators=(",", ":"))) <= RESULT_LIMIT:
            break
        if extra == "perPrompt":
            report.get("accuracy", {}).pop("perPrompt", None)
        else:
            report.pop(extra, None)
    return doc
