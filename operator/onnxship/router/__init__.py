"""The builtin traffic router: weighted splits between revisions, mirroring, metrics.

``onnxship route`` runs it (``server.py``); ``metrics_source.py`` reads its metrics back as
``plan.analysis.Measurements``; ``admin_push`` sets its routes from another process.
"""

from .admin import admin_push

__all__ = ["admin_push"]
