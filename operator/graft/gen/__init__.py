"""Build-time generators: the CRDs (from graft.api), the RBAC and the Argo CD health checks
(`graft crds`, `graft manifests`, `graft argocd`); `make verify` fails when their committed
output drifts."""
