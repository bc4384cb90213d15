{{/* Names, labels and shared fragments of the agentqueue-operator chart. */}}

{{- define "agentqueue.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentqueue.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "agentqueue.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentqueue.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentqueue.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentqueue.labels" -}}
helm.sh/chart: {{ include "agentqueue.chart" . }}
{{ include "agentqueue.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentqueue
{{- end -}}

{{- define "agentqueue.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agentqueue.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "agentqueue.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "agentqueue.peeringName" -}}
{{- default (include "agentqueue.fullname" .) .Values.peering.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* True (non-empty) when the operator serves every namespace. */}}
{{- define "agentqueue.clusterWide" -}}
{{- if not .Values.watch.namespaces -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the default Redis connection, if any. */}}
{{- define "agentqueue.redisSecretName" -}}
{{- if .Values.redis.existingSecret.name -}}
{{- .Values.redis.existingSecret.name -}}
{{- else if .Values.redis.url -}}
{{- printf "%s-redis" (include "agentqueue.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "agentqueue.redisCaKey" -}}
{{- if .Values.redis.existingSecret.name -}}
{{- .Values.redis.existingSecret.caKey -}}
{{- else if .Values.redis.caCert -}}
ca.crt
{{- end -}}
{{- end -}}

{{/*
The rules of what the operator does in a namespace it serves. Used by the ClusterRole in
cluster-wide mode and by one Role per namespace otherwise. Keep in step with kube.py and
kopf's needs; tests/test_rbac.py checks every verb and that nothing else is allowed.
*/}}
{{- define "agentqueue.namespacedRules" -}}
# The three kinds: kopf watches them and patches finalizers and its annotations; the
# operator never updates a spec.
- apiGroups: [agentqueue.io]
  resources: [agentqueues, consumergroups, retentionpolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [agentqueue.io]
  resources: [agentqueues/status, consumergroups/status, retentionpolicies/status]
  verbs: [get, patch, update]
{{- if .Values.rbac.ownerReferencesPermission }}
# Owned Secrets are created with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
- apiGroups: [agentqueue.io]
  resources: [agentqueues/finalizers]
  verbs: [update]
{{- end }}
# Credentials Secrets it owns, and Redis Secrets named by queues. Never list or watch.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update, delete]
# Events about its objects.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Consumer workloads: only their /scale subresource, never their spec.
- apiGroups: [apps]
  resources: [deployments/scale, statefulsets/scale]
  verbs: [get, patch, update]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get]
{{- range .Values.rbac.extraScaleTargets }}
- apiGroups: [{{ .apiGroup | quote }}]
  resources:
  {{- range .resources }}
  - {{ printf "%s/scale" . | quote }}
  {{- end }}
  verbs: [get, patch, update]
{{- end }}
# Autoscalers the operator must not fight.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [list]
{{- end -}}

{{/* kopf's peering rules for a resource (clusterkopfpeerings or kopfpeerings). */}}
{{- define "agentqueue.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [{{ .resource }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ .resource }}]
  resourceNames: [{{ .name | quote }}]
  verbs: [get, patch]
{{- end -}}
