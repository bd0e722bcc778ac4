"""The Kubernetes operator: kopf handlers that observe, call `plan`, apply and write status."""
