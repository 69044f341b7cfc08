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
