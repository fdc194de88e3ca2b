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

{{/* CURVE (curve.enabled): the release's key Secret, and what each pod that talks to
the server (server, sources, the helm test probe) adds to use it; callers include these
only when curve.enabled. */}}
{{- define "splittest.keysSecret" -}}
{{- printf "%s-keys" (include "splittest.fullname" .) -}}
{{- end -}}

{{- define "splittest.keysDir" -}}
/etc/splittest/keys
{{- end -}}

{{- define "splittest.keysEnv" -}}
- name: SPLITTEST_KEYS
  value: {{ include "splittest.keysDir" . | quote }}
{{- end -}}

{{- define "splittest.keysMount" -}}
- name: keys
  mountPath: {{ include "splittest.keysDir" . }}
  readOnly: true
{{- end -}}

{{/* 0400: kubelet makes it 0440 with the pod's fsGroup, so the non-root program reads it. */}}
{{- define "splittest.keysVolume" -}}
- name: keys
  secret:
    secretName: {{ include "splittest.keysSecret" . }}
    defaultMode: 0400
{{- end -}}
