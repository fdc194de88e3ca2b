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

{{/* Links (values `link`). A rate in `testbed run --bandwidth`'s syntax (5mbit, 0.94mbit,
2.5kbps; units bit, kbit, mbit, gbit and bps, kbps, mbps, gbps = bytes/s, any case) as
the quantity in bit/s that the kubernetes.io/ingress-bandwidth and egress-bandwidth
annotations take (5M, 940k: decimal SI suffixes, "k" lower case); "" stays "" (not
shaped). Refused outside 8kbit..100gbit, the testbed's range (the kubelet refuses a pod
below 1kbit). */}}
{{- define "splittest.bandwidthQuantity" -}}
{{- $text := lower (trim (toString .)) -}}
{{- if $text -}}
{{- $rate := "^([0-9]*\\.?[0-9]+)([a-z]+)$" -}}
{{- $scale := dict "bit" 1 "kbit" 1000 "mbit" 1000000 "gbit" 1000000000 "bps" 8 "kbps" 8000 "mbps" 8000000 "gbps" 8000000000 -}}
{{- $unit := regexReplaceAll $rate $text "${2}" -}}
{{- if not (and (regexMatch $rate $text) (hasKey $scale $unit)) -}}
{{- fail (printf "link: %q is not a rate; write a number and a unit, e.g. 5mbit (units: bit, kbit, mbit, gbit, bps, kbps, mbps, gbps)" .) -}}
{{- end -}}
{{- $bits := round (mulf (float64 (regexReplaceAll $rate $text "${1}")) (get $scale $unit)) 0 | int64 -}}
{{- if or (lt $bits 8000) (gt $bits 100000000000) -}}
{{- fail (printf "link: %s is outside 8kbit..100gbit" .) -}}
{{- end -}}
{{- if eq (mod $bits 1000000000) 0 -}}{{ div $bits 1000000000 }}G
{{- else if eq (mod $bits 1000000) 0 -}}{{ div $bits 1000000 }}M
{{- else if eq (mod $bits 1000) 0 -}}{{ div $bits 1000 }}k
{{- else -}}{{ $bits }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The link of source .index (call with (dict "root" $ "index" I)), as JSON
{"egress": QUANTITY, "ingress": QUANTITY} ("": not shaped): link.perSource[index mod its
length] when perSource is given, else link.bandwidth. An item is RATE (both ways),
"UP/DOWN" (egress: what the source sends, its uplink; ingress: its downlink) or
{egress: RATE, ingress: RATE}. */}}
{{- define "splittest.sourceLink" -}}
{{- $link := .root.Values.link | default dict -}}
{{- $bandwidth := get $link "bandwidth" | default "" -}}
{{- $perSource := get $link "perSource" | default list -}}
{{- if and $bandwidth $perSource -}}
{{- fail "link.bandwidth and link.perSource: set one of them (link.bandwidth: every source's link; link.perSource: one per source, cycled)" -}}
{{- end -}}
{{- $item := $bandwidth -}}
{{- if $perSource -}}
{{- $item = index $perSource (mod .index (len $perSource)) -}}
{{- end -}}
{{- $egress := "" -}}
{{- $ingress := "" -}}
{{- if kindIs "map" $item -}}
{{- $egress = get $item "egress" | default "" -}}
{{- $ingress = get $item "ingress" | default "" -}}
{{- else if $item -}}
{{- $parts := splitList "/" (toString $item) -}}
{{- if gt (len $parts) 2 -}}
{{- fail (printf "link: %q is not RATE or UP/DOWN (e.g. 5mbit or 2mbit/20mbit)" $item) -}}
{{- end -}}
{{- $egress = first $parts -}}
{{- $ingress = last $parts -}}
{{- end -}}
{{- dict "egress" (include "splittest.bandwidthQuantity" $egress) "ingress" (include "splittest.bandwidthQuantity" $ingress) | toJson -}}
{{- end -}}
