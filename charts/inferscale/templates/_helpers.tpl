{{/* Name of the chart, overridable. */}}
{{- define "inferscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name of the operator's objects. */}}
{{- define "inferscale.fullname" -}}
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

{{- define "inferscale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the operator pods. */}}
{{- define "inferscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "inferscale.labels" -}}
helm.sh/chart: {{ include "inferscale.chart" . }}
{{ include "inferscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: inferscale
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "inferscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inferscale.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; tag defaults to the appVersion. */}}
{{- define "inferscale.image" -}}
{{- $img := index . 0 }}{{- $ctx := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $ctx.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator watches, comma-separated: the release namespace first, then
watchNamespaces (without repeating it). Empty with watchAllNamespaces.
*/}}
{{- define "inferscale.watchedNamespaces" -}}
{{- if .Values.watchAllNamespaces }}
{{- if .Values.watchNamespaces }}
{{- fail "watchAllNamespaces: true watches every namespace: leave watchNamespaces empty" }}
{{- end }}
{{- else }}
{{- prepend .Values.watchNamespaces .Release.Namespace | uniq | join "," }}
{{- end }}
{{- end }}

{{- define "inferscale.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/*
The rules of what the operator calls, in the namespaces it watches. Each verb is used; see
docs/operator.md "RBAC" and operator/src/{controller,apply,dereference}.rs.
*/}}
{{- define "inferscale.rules" -}}
# Watch ScalingEndpoints (the controller's cache) and write their status (server-side apply).
- apiGroups: [inferscale.dev]
  resources: [scalingendpoints]
  verbs: [list, watch]
- apiGroups: [inferscale.dev]
  resources: [scalingendpoints/status]
  verbs: [patch]
# Children carry an ownerReference with blockOwnerDeletion: clusters that enforce owner-reference
# permissions (OwnerReferencesPermissionEnforcement) ask for update on the owner's finalizers.
- apiGroups: [inferscale.dev]
  resources: [scalingendpoints/finalizers]
  verbs: [update]
# Children: cached by watches (list, watch), looked up before they are created (get: the caches
# hold only labelled objects, and a same-named object of someone else must never be taken over),
# written by server-side apply (patch, and create for a patch that creates), removed when the spec
# no longer asks for them (delete). Worker ConfigMaps are immutable and content-addressed: the
# operator deletes the ones no worker pod uses any more.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# The model-cache claim of vllm.cache.pvc (owned by its ScalingEndpoint, deleted with it).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
# The NetworkPolicies of worker.networkPolicy.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Secrets are read: get of the referenced ones, list/watch as metadata only (a rotated Secret
# re-reconciles its endpoints).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
# ...and created, for one purpose: the API key the operator generates for a ScalingEndpoint's vLLM
# server (a Secret it owns, mounted by that endpoint's vLLM and worker pods only). Kubernetes
# cannot narrow create by name; the operator never updates, patches or deletes a Secret (the
# generated one goes with its ScalingEndpoint by garbage collection).
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
# Pods of the workers and vLLM servers are read, never written: their waiting reasons
# (CrashLoopBackOff, ImagePullBackOff, Unschedulable) become the WorkersAvailable and
# ModelServerAvailable conditions.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.rbac.serviceMonitors }}
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, create, patch, delete]
{{- end }}
{{- end }}
