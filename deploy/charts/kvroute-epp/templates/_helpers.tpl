{{- define "kvroute-epp.name" -}}
{{ .Release.Name }}-epp
{{- end }}

{{- define "kvroute-epp.selectorLabels" -}}
app.kubernetes.io/name: kvroute-epp
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvroute-epp.labels" -}}
{{ include "kvroute-epp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kvroute-epp.poolGroup" -}}
{{- if eq .Values.inferencePool.apiVersion "inference.networking.x-k8s.io/v1alpha2" -}}
inference.networking.x-k8s.io
{{- else -}}
inference.networking.k8s.io
{{- end -}}
{{- end }}

{{- define "kvroute-epp.leaseName" -}}
epp-{{ .Release.Namespace }}-{{ .Release.Name }}.gateway-api-inference-extension.sigs.k8s.io
{{- end }}
