"""A real Kubernetes control plane on 127.0.0.1 for the e2e tests, and the parts of a node
that the tests play themselves (scheduler binding and kubelet status)."""
