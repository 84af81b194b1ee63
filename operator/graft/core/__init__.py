"""Pure Kubernetes vocabulary every layer shares: keys, owners and labels, readiness, names,
conditions, quantities, and the operator's settings (read once, at start-up)."""
