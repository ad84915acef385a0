{{/*
Name of the chart, overridable with nameOverride.
*/}}
{{- define "hostplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: fullnameOverride, or <release>-<name>, or <release> when the release
name already contains the chart name. Cut to leave room for the component suffixes.
*/}}
{{- define "hostplane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hostplane.controller.fullname" -}}
{{ include "hostplane.fullname" . }}-controller
{{- end }}

{{- define "hostplane.proxy.fullname" -}}
{{ include "hostplane.fullname" . }}-proxy
{{- end }}

{{/*
Name of the controller's leader-election Lease.
*/}}
{{- define "hostplane.controller.leaseName" -}}
{{ include "hostplane.controller.fullname" . }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "hostplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "hostplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hostplane
{{- end }}

{{/*
Selector labels of one component; call with (dict "context" $ "component" "controller").
*/}}
{{- define "hostplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hostplane.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The controller pods' selector labels as k=v,k=v (`--hostplane-pod-labels` of the pods runtime).
*/}}
{{- define "hostplane.controller.podLabels" -}}
{{- $labels := include "hostplane.selectorLabels" (dict "context" . "component" "controller") | fromYaml }}
{{- $pairs := list }}
{{- range $key, $value := $labels }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "hostplane.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
Scheduling and security settings both Deployments share (pod spec level).
*/}}
{{- define "hostplane.podPlacement" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
