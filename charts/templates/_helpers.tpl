{{/* Names and labels shared by every object of the release. */}}
{{- define "splittest.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* At most 50 characters: the objects add suffixes such as "-sources" and "-test-server". */}}
{{- define "splittest.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "splittest.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "splittest.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "splittest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "splittest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "splittest.labels" -}}
{{ include "splittest.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: splittest
helm.sh/chart: {{ include "splittest.chart" . }}
{{- end -}}

{{/* The source CPU cap as a Kubernetes quantity in millicores: 0.4, "0.4" (what
`--set cpu=0.4` gives) -> 400m; 2, "2" -> 2000m; "400m" -> 400m. */}}
{{- define "splittest.cpuMillis" -}}
{{- $cpu := .Values.cpu -}}
{{- if and (kindIs "string" $cpu) (hasSuffix "m" $cpu) -}}
{{- trimSuffix "m" $cpu | int64 -}}
{{- else -}}
{{- round (mulf (float64 $cpu) 1000) 0 | int64 -}}
{{- end -}}
{{- end -}}

{{/* Torch threads in a source: the cap rounded up, at least one. */}}
{{- define "splittest.sourceThreads" -}}
{{- $millis := include "splittest.cpuMillis" . | int64 -}}
{{- max 1 (div (add $millis 999) 1000) -}}
{{- end -}}

{{- define "splittest.serverAddress" -}}
{{- printf "tcp://%s-server:%d" (include "splittest.fullname" .) (.Values.server.port | int) -}}
{{- end -}}

{{- define "splittest.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Security contexts of a role ("server", "source" or "probe"): the chart-wide
defaults (podSecurityContext, securityContext: the "restricted" Pod Security Standard)
with the role's own values merged over them. Call with (dict "root" $ "role" "server"). */}}
{{- define "splittest.podSecurityContext" -}}
{{- $role := index .root.Values .role | default dict -}}
{{- $context := mustMergeOverwrite (deepCopy (.root.Values.podSecurityContext | default dict)) (deepCopy ($role.podSecurityContext | default dict)) -}}
{{- if and (hasKey $context "fsGroup") (not (hasKey $context "fsGroupChangePolicy")) -}}
{{- $_ := set $context "fsGroupChangePolicy" "OnRootMismatch" -}}
{{- end -}}
{{- toYaml $context -}}
{{- end -}}

{{- define "splittest.securityContext" -}}
{{- $role := index .root.Values .role | default dict -}}
{{- toYaml (mustMergeOverwrite (deepCopy (.root.Values.securityContext | default dict)) (deepCopy ($role.securityContext | default dict))) -}}
{{- end -}}

{{/* The root filesystem is read-only: the programs (and torch, matplotlib, Python)
write only under /tmp, an emptyDir of the pod's own. */}}
{{- define "splittest.writableEnv" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: TORCH_HOME
  value: /tmp/torch
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end -}}

{{- define "splittest.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "splittest.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSize | quote }}
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

{{/* 0400: kubelet makes it 0440 with the pod's fsGroup (podSecurityContext.fsGroup), so
the non-root program reads it. */}}
{{- define "splittest.keysVolume" -}}
- name: keys
  secret:
    secretName: {{ include "splittest.keysSecret" . }}
    defaultMode: 0400
{{- end -}}
