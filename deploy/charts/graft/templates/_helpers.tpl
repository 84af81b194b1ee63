{{/*
Names and labels. The chart installs cluster-wide objects with fixed names (the CRDs and the
ClusterRoles graft-operator, graft-operator-account-secrets, graft-gateway, graft-admin,
graft-member, graft-viewer, which the operator binds itself and Users to by name), so one
release per cluster.
*/}}

{{/* <release> when it contains "graft", else <release>-graft; 54 characters at most. */}}
{{- define "graft.fullname" -}}
{{- if contains "graft" .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-graft" .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The operator's Deployment (and, by default, ServiceAccount): graft-operator for release graft. */}}
{{- define "graft.operatorName" -}}
{{- printf "%s-operator" (include "graft.fullname" .) -}}
{{- end -}}

{{- define "graft.serviceAccountName" -}}
{{- default (include "graft.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Labels of everything the chart installs. */}}
{{- define "graft.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: graft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: graft
{{- end -}}

{{/* The operator pod's selector. */}}
{{- define "graft.selectorLabels" -}}
app.kubernetes.io/name: graft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The gateway's Deployment, Service and ServiceAccount: graft-gateway for release graft. */}}
{{- define "graft.gatewayName" -}}
{{- printf "%s-gateway" (include "graft.fullname" .) -}}
{{- end -}}

{{/* The gateway pods' selector. app.kubernetes.io/component=gateway (graft.core.keys.
GATEWAY_COMPONENT) is also what the operator finds the gateway's pods by, and what each
account's NetworkPolicy admits to its model servers (from the operator's namespace). */}}
{{- define "graft.gatewaySelectorLabels" -}}
app.kubernetes.io/name: graft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "graft.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The image of Graft's Job pods and Reference model servers. */}}
{{- define "graft.runtimeImage" -}}
{{- default (printf "ghcr.io/graft-dev/graft:%s" .Chart.AppVersion) .Values.runtimeImage -}}
{{- end -}}
