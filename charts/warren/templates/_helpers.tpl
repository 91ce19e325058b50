{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "warren.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name of the release's objects. */}}
{{- define "warren.fullname" -}}
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

{{- define "warren.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "warren.selectorLabels" -}}
app.kubernetes.io/name: {{ include "warren.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "warren.labels" -}}
helm.sh/chart: {{ include "warren.chart" . }}
{{ include "warren.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: warren
{{- end }}

{{- define "warren.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "warren.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the AMQP URI(s). */}}
{{- define "warren.rabbitmqSecretName" -}}
{{- if .Values.rabbitmq.existingSecret }}
{{- .Values.rabbitmq.existingSecret }}
{{- else }}
{{- printf "%s-rabbitmq" (include "warren.fullname" .) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the workers' AMQP URI, if any. */}}
{{- define "warren.rabbitmqWorkerSecretName" -}}
{{- if and .Values.rabbitmq.existingSecret .Values.rabbitmq.workerSecretKey }}
{{- .Values.rabbitmq.existingSecret }}
{{- else }}
{{- printf "%s-rabbitmq" (include "warren.fullname" .) }}
{{- end }}
{{- end }}

{{/* Whether the chart owns a Secret: a URI given as a value. */}}
{{- define "warren.ownsRabbitmqSecret" -}}
{{- if or (not .Values.rabbitmq.existingSecret) (and .Values.rabbitmq.workerUrl (not .Values.rabbitmq.workerSecretKey)) }}true{{ end }}
{{- end }}

{{/* Leader election is on with more than one replica, or when asked for. */}}
{{- define "warren.leaderElection" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.leaderElection.enabled }}true{{ end }}
{{- end }}

{{- define "warren.metricsServiceName" -}}
{{- printf "%s-metrics" (include "warren.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fails rendering with a clear message when the values contradict each other in ways the schema
cannot say well (the schema rejects the rest first).
*/}}
{{- define "warren.validate" -}}
{{- $r := .Values.rabbitmq }}
{{- if and (not $r.url) (not $r.existingSecret) }}
{{- fail "rabbitmq: set rabbitmq.url (an amqp:// URI) or rabbitmq.existingSecret (a Secret with the URI under rabbitmq.secretKey)" }}
{{- end }}
{{- if and $r.url $r.existingSecret }}
{{- fail "rabbitmq: set only one of rabbitmq.url and rabbitmq.existingSecret" }}
{{- end }}
{{- if and $r.workerUrl $r.workerSecretKey }}
{{- fail "rabbitmq: set only one of rabbitmq.workerUrl and rabbitmq.workerSecretKey" }}
{{- end }}
{{- if and $r.workerSecretKey (not $r.existingSecret) }}
{{- fail "rabbitmq.workerSecretKey needs rabbitmq.existingSecret" }}
{{- end }}
{{- if and ($r.tls).clientCertificate (not ($r.tls).secretName) }}
{{- fail "rabbitmq.tls.clientCertificate needs rabbitmq.tls.secretName (the Secret with tls.crt and tls.key)" }}
{{- end }}
{{- end }}
