{{/* Names, labels and images shared by every template. */}}

{{- define "onnxship.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it already says onnxship. */}}
{{- define "onnxship.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "onnxship.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "onnxship.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: onnxship
{{- end }}

{{/* Selects the operator's pods only: the model and router pods the operator creates carry
app.kubernetes.io/name=onnxship too, but another component and instance. */}}
{{- define "onnxship.selectorLabels" -}}
app.kubernetes.io/name: {{ include "onnxship.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "onnxship.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "onnxship.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "onnxship.imageRef" -}}
{{- $img := index . 0 }}{{- $ctx := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $ctx.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Peering runs when asked for, or with more than one replica. */}}
{{- define "onnxship.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{- define "onnxship.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}
