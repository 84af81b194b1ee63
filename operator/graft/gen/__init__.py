"""Build-time generators: the CRDs (from graft.api, `graft crds`), the Helm chart's generated
files (CRD and RBAC templates, Chart.yaml: `graft chart`), the plain manifests rendered from the
chart (`graft manifests`) and the Argo CD health checks (`graft argocd`); `make verify` fails when
their committed output drifts."""
