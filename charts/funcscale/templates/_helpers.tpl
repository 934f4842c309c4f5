{{/* Name of the chart. */}}
{{- define "funcscale.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, or release-chart when the release name lacks the chart's. */}}
{{- define "funcscale.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "funcscale.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "funcscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: funcscale
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "funcscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "funcscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "funcscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "funcscale.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "funcscale.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "funcscale.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) -}}
{{- end -}}

{{/* The one namespace the operator watches, or "" for all namespaces. */}}
{{- define "funcscale.watchNamespace" -}}
{{- if .Values.watchNamespaces -}}{{ first .Values.watchNamespaces }}{{- end -}}
{{- end -}}

{{/* The Lease the replicas elect a leader on (fixed: the operator's --leader-election lease). */}}
{{- define "funcscale.leaseName" -}}funcscale-operator{{- end -}}

{{/* What the operator does with the objects of the namespaces it manages. */}}
{{- define "funcscale.managedRules" -}}
# the custom resources: read them, write only their status (GitOps tools own the spec)
- apiGroups: [funcscale.dev]
  resources: [funcqueues, funcworkerpools]
  verbs: [get, list, watch]
- apiGroups: [funcscale.dev]
  resources: [funcqueues/status, funcworkerpools/status]
  verbs: [get, patch]
# owner references with blockOwnerDeletion on clusters that enforce OwnerReferencesPermissionEnforcement
- apiGroups: [funcscale.dev]
  resources: [funcworkerpools/finalizers]
  verbs: [update]
# the pools' Deployments (server-side apply; deletion is the garbage collector's, via owner references)
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# the beat's schedules (server-side apply)
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
# Redis credentials that FuncQueues reference (read by name only)
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# the pools' pods: a scale-down lists them (readiness, age) to remove the least busy first and
# annotates those with controller.kubernetes.io/pod-deletion-cost
- apiGroups: [""]
  resources: [pods]
  verbs: [list, patch]
# Events on pools and queues (scaling decisions, errors; kube's Recorder uses events.k8s.io/v1)
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
