{{/*
Names and labels shared by every template.
*/}}

{{/* Chart name, overridable. */}}
{{- define "palisade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified release name: the release name alone when it already contains the chart name
(release "palisade" gives "palisade-agent", "palisade-learner"). Truncated so that the longest
suffix ("-learner-metrics") still fits the 63-character DNS label limit.
*/}}
{{- define "palisade.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "palisade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object; pass a dict with "ctx" (the root context) and "component". */}}
{{- define "palisade.labels" -}}
helm.sh/chart: {{ include "palisade.chart" .ctx }}
{{ include "palisade.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: palisade
{{- end }}

{{/* Labels that select a component's pods; never change them (selectors are immutable). */}}
{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "palisade.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "palisade.agent.name" -}}
{{- printf "%s-agent" (include "palisade.fullname" .) }}
{{- end }}

{{- define "palisade.learner.name" -}}
{{- printf "%s-learner" (include "palisade.fullname" .) }}
{{- end }}

{{- define "palisade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where agents stream flows: the learner Service's cluster DNS name. */}}
{{- define "palisade.learner.url" -}}
{{- printf "http://%s.%s.svc:%d" (include "palisade.learner.name" .) .Release.Namespace (int .Values.learner.grpcPort) }}
{{- end }}
