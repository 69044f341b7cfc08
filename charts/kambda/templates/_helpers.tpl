{{- define "kambda.labels" -}}
app.kubernetes.io/name: kambda
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- define "kambda.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- define "kambda.runtimeImage" -}}
{{ .Values.runtimeImage.repository }}:{{ .Values.runtimeImage.tag | default .Chart.AppVersion }}
{{- end }}
{{- define "kambda.functionsNamespace" -}}
{{ .Values.functionsNamespace | default .Release.Namespace }}
{{- end }}
{{- define "kambda.dataClaim" -}}
{{ .Values.gateway.persistence.existingClaim | default (printf "%s-gateway-data" .Release.Name) }}
{{- end }}
{{- /* The gateway's data directory needs a volume that outlives the pod only with the SQLite queue. */ -}}
{{- define "kambda.persistent" -}}
{{- if and .Values.gateway.persistence.enabled (eq .Values.gateway.queue.backend "sqlite") }}true{{ end }}
{{- end }}
{{- define "kambda.runtimeImageArgs" -}}
{{- range $runtime, $image := .Values.runtimeImages }}
- --runtime-image-for={{ $runtime }}={{ $image.repository }}:{{ $image.tag | default $.Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* The gateway's replica count: gateway.replicas, else 2 with the NATS queue (1 with SQLite). SQLite is one file
with one writer, so more than one replica is refused here rather than failing at run time. */}}
{{- define "kambda.gatewayReplicas" -}}
{{- $nats := eq .Values.gateway.queue.backend "nats" -}}
{{- $replicas := .Values.gateway.replicas | default (ternary 2 1 $nats) | int -}}
{{- if and (gt $replicas 1) (not $nats) -}}
{{- fail (printf "gateway.replicas=%d needs gateway.queue.backend=nats: the SQLite queue is one file with one writer (set gateway.queue.backend=nats and gateway.queue.natsUrl, or gateway.replicas=1)" $replicas) -}}
{{- end -}}
{{- $replicas -}}
{{- end -}}

{{/* Non-empty when the gateway runs as replicas that share functions through Leases (the NATS queue). */}}
{{- define "kambda.replicated" -}}
{{- if eq .Values.gateway.queue.backend "nats" }}true{{ end -}}
{{- end -}}
