"""Build-time generators: the CRDs (from graft.api, `graft crds`), the Helm chart's generated
files (CRD and RBAC templates, Chart.yaml: `graft chart`) and the plain manifests rendered from
the chart (`graft manifests`); `make verify` fails when their committed output drifts."""
