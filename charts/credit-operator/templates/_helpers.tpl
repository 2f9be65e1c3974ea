{{- define "credit-operator.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "credit-operator.labels" -}}
app.kubernetes.io/name: credit-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "credit-operator.selector" -}}
app.kubernetes.io/name: credit-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
