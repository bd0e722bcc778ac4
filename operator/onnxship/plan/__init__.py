"""Decisions: revision identity, the rollout state machine, desired objects. Pure, no I/O."""
