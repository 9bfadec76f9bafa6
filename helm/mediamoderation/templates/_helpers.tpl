{{/*
Names and labels.
*/}}
{{- define "mediamoderation.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name, at most 50 characters so that "<fullname>-<role>" and "<fullname>-config" stay below 63.
*/}}
{{- define "mediamoderation.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mediamoderation.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mediamoderation.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mediamoderation.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mediamoderation.labels" -}}
helm.sh/chart: {{ include "mediamoderation.chart" . }}
{{ include "mediamoderation.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mediamoderation.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mediamoderation.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mediamoderation.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The roles that get a Deployment: "all" by default; "ingest" and "worker" with scale-out.
Returned as a space-separated string (templates cannot return lists): use with splitList.
*/}}
{{- define "mediamoderation.roles" -}}
{{- if .Values.scaleOut.enabled }}ingest worker{{ else }}all{{ end }}
{{- end }}

{{/*
The service's config.yaml: .Values.config verbatim, deep-merged with the `config` of every optional
feature that is enabled (scaleOut, photodna, takedown, review), in that order.  tests/test_deploy.py
renders the same merge in Python and runs check-config on it; keep both in step.
*/}}
{{- define "mediamoderation.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- range $feature := list "scaleOut" "photodna" "takedown" "review" }}
{{- $f := index $.Values $feature }}
{{- if $f.enabled }}
{{- $cfg = mergeOverwrite $cfg (deepCopy $f.config) }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
terminationGracePeriodSeconds: longer than the service's drain time (config.service.shutdown_grace,
then up to 10 s flushing notifications, then closing).  An explicit value must exceed shutdown_grace.
*/}}
{{- define "mediamoderation.terminationGracePeriodSeconds" -}}
{{- $grace := int (ceil (default 30 .Values.config.service.shutdown_grace)) }}
{{- if .Values.terminationGracePeriodSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be larger than config.service.shutdown_grace (%v): Kubernetes would kill the pod before it drains" .Values.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add $grace (int .Values.terminationGraceMargin) }}
{{- end }}
{{- end }}

{{/*
The volume holding the bank files.
*/}}
{{- define "mediamoderation.banksVolume" -}}
{{- if .Values.banks.existingSecret }}
secret:
  secretName: {{ .Values.banks.existingSecret }}
{{- else if .Values.banks.existingConfigMap }}
configMap:
  name: {{ .Values.banks.existingConfigMap }}
{{- else if .Values.banks.existingClaim }}
persistentVolumeClaim:
  claimName: {{ .Values.banks.existingClaim }}
  readOnly: true
{{- else }}
configMap:
  name: {{ include "mediamoderation.fullname" . }}-banks
{{- end }}
{{- end }}
