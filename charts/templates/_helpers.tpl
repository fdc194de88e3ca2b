{{/* Names and labels shared by every object of the release. */}}
{{- define "splittest.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "splittest.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "splittest.labels" -}}
{{ include "splittest.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: splittest
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The source CPU cap as a Kubernetes quantity in millicores: 0.4 -> 400m, "400m" -> 400m. */}}
{{- define "splittest.cpuMillis" -}}
{{- if kindIs "string" .Values.cpu -}}
{{- trimSuffix "m" .Values.cpu | int -}}
{{- else -}}
{{- round (mulf .Values.cpu 1000) 0 | int -}}
{{- end -}}
{{- end -}}

{{/* Torch threads in a source: the cap rounded up, at least one. */}}
{{- define "splittest.sourceThreads" -}}
{{- $millis := include "splittest.cpuMillis" . | int -}}
{{- max 1 (div (add $millis 999) 1000) -}}
{{- end -}}

{{- define "splittest.serverAddress" -}}
{{- printf "tcp://%s-server:%d" (include "splittest.fullname" .) (.Values.server.port | int) -}}
{{- end -}}

{{- define "splittest.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
