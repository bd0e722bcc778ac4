"""Local mode: the operator's flow on one machine, with processes instead of pods.

``onnxship up`` observes (processes alive and ready, artifacts in the store, router metrics,
commands left in the state folder), asks ``onnxship.plan`` what should be true, and applies
the answer. It holds no rollout logic of its own.

Modules, by the operator's seams (the controller's counterpart in brackets):

- ``driver``: the loop, one tick = one reconcile (``controller.reconcile.reconcile``)
- ``inputs``: the applied document and commands (the spec, the command annotation)
- ``observe``: the world as ``plan.observed.Observed`` (``reconcile._observe_*``)
- ``compression``: the local compression Job and the revision's record (compression Jobs)
- ``servers``: `onnxship serve` per revision and environment, supervised (Deployments)
- ``routing``: the router process and its route table (the router and its ConfigMap)
- ``execute``: the plan's actions applied (``reconcile._execute``)
- ``analysis``: the router's /metrics over each interval, judged (``router_metrics``)
- ``events``, ``view``, ``state``, ``spec``, ``processes``, ``loadgen``: what the user sees,
  the state folder, reading a spec, child processes, a load generator.

What both shells share lives in ``plan``: the serve arguments (``workloads.serve_args``)
and the revision's record (``compression_jobs``), so a new serving flag or status field
lands once.
"""
