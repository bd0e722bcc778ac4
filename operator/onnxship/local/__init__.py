"""Local mode: the operator's flow on one machine, with processes instead of pods.

``onnxship up`` observes (processes alive and ready, artifacts in the store, router metrics,
commands left in the state folder), asks ``onnxship.plan`` what should be true, and applies
the answer. It holds no rollout logic of its own.
"""
