{{/* The chart name, or nameOverride. */}}
{{- define "tokensync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name when it contains the chart name. */}}
{{- define "tokensync.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tokensync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokensync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokensync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tokensync.selectorLabels" . }}
app.kubernetes.io/component: controller
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tokensync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokensync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokensync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Lease name: the controller's default unless leaderElection.leaseName is set. */}}
{{- define "tokensync.leaseName" -}}
{{- default "tokensync-controller" .Values.leaderElection.leaseName }}
{{- end }}

{{/*
What the controller does with ClientCredentials, Secrets and Events, wherever it watches:
the rules of the ClusterRole, or of the Role in each watched namespace. docs/install.md
names the call each rule serves; tests/deploy_manifests.rs checks them against the code.
*/}}
{{- define "tokensync.rules" -}}
- apiGroups: ["tokensync.io"]
  resources: ["clientcredentials"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["tokensync.io"]
  resources: ["clientcredentials/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
