"""Build-time generators: the CRDs (from graft.api) and the RBAC (`graft crds`, `graft
manifests`); `make verify` fails when their committed output drifts."""
