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
Labels of the pods tenants of the pods runtime must admit on their API port, as k=v,k=v
(`--hostplane-pod-labels`): the labels the controller pods and the proxy pods share, i.e. the
selector labels without the component. The controller reaches tenants (health checks, token
minting) and so does the proxy (relayed connections, kubeconfig downloads). Not the controller's
full selector: a proxy pod carrying `component: controller` would fall under the controller
Deployment's selector, the metrics Service and the ServiceMonitor.
*/}}
{{- define "hostplane.tenantPeerLabels" -}}
{{- $labels := dict "app.kubernetes.io/name" (include "hostplane.name" .) "app.kubernetes.io/instance" .Release.Name }}
{{- $pairs := list }}
{{- range $key, $value := $labels }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
The proxy runs as its own Deployment only with the pods runtime: with processes, tenant API
servers listen on the controller pod's loopback, so the proxy must be a container of that pod.
*/}}
{{- define "hostplane.proxy.standalone" -}}
{{- if and .Values.proxy.enabled (eq .Values.controller.runtime "pods") }}true{{ end }}
{{- end }}

{{/*
The proxy container: a sidecar of the controller pod (processes runtime) or the only container of
the proxy pods (pods runtime). `hostplane proxy` is the same either way.
*/}}
{{- define "hostplane.proxy.container" -}}
- name: proxy
  image: {{ include "hostplane.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - proxy
    - --log={{ .Values.logLevel }}
    - --listen=0.0.0.0:{{ .Values.proxy.containerPort }}
    - --tenant-domain={{ .Values.proxy.tenantDomain }}
    - --hello-timeout-ms={{ .Values.proxy.helloTimeoutMs }}
    - --activity-interval-seconds={{ .Values.proxy.activityIntervalSeconds }}
    - --wake-timeout-seconds={{ .Values.proxy.wakeTimeoutSeconds }}
    - --metrics-listen=0.0.0.0:{{ .Values.proxy.metrics.port }}
    {{- with .Values.controller.proxyAddress }}
    - --proxy-address={{ . }}
    {{- end }}
    {{- with .Values.proxy.download }}
    {{- if .enabled }}
    - --download-listen=0.0.0.0:{{ .containerPort }}
    {{- if .tlsSecret }}
    - --download-tls-cert=/etc/hostplane/download-tls/tls.crt
    - --download-tls-key=/etc/hostplane/download-tls/tls.key
    {{- else }}
    # The generated certificate's CA; the root filesystem is read-only.
    - --download-ca-file=/tmp/download-ca.crt
    {{- end }}
    {{- else }}
    - --no-download
    {{- end }}
    {{- end }}
    {{- with .Values.proxy.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: tenants
      containerPort: {{ .Values.proxy.containerPort }}
      protocol: TCP
    {{- if .Values.proxy.download.enabled }}
    - name: download
      containerPort: {{ .Values.proxy.download.containerPort }}
      protocol: TCP
    {{- end }}
    - name: proxy-metrics
      containerPort: {{ .Values.proxy.metrics.port }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: proxy-metrics
    periodSeconds: 20
    timeoutSeconds: 5
  readinessProbe:
    httpGet:
      path: /readyz
      port: proxy-metrics
    periodSeconds: 10
    timeoutSeconds: 5
  resources:
    {{- toYaml .Values.proxy.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    # Holds a generated download CA (shared with the controller container in its pod).
    - name: tmp
      mountPath: /tmp
    {{- if and .Values.proxy.download.enabled .Values.proxy.download.tlsSecret }}
    - name: download-tls
      mountPath: /etc/hostplane/download-tls
      readOnly: true
    {{- end }}
{{- end }}

{{/*
The download endpoint's certificate volume, when one is named.
*/}}
{{- define "hostplane.proxy.tlsVolume" -}}
{{- if and .Values.proxy.download.enabled .Values.proxy.download.tlsSecret }}
- name: download-tls
  secret:
    secretName: {{ .Values.proxy.download.tlsSecret }}
{{- end }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "hostplane.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
Scheduling and security settings both Deployments share (pod spec level); call with
(dict "context" $ "affinity" AFFINITY): the proxy pods add their anti-affinity to `affinity`.
*/}}
{{- define "hostplane.podPlacement" -}}
{{- with .context.Values }}
securityContext:
  {{- toYaml .podSecurityContext | nindent 2 }}
{{- with .imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Affinity of the proxy pods: the shared `affinity`, with `proxy.podAntiAffinity` spreading the
replicas over nodes (`soft`: preferred, `hard`: required; it replaces a podAntiAffinity there).
*/}}
{{- define "hostplane.proxy.affinity" -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "hostplane.selectorLabels" (dict "context" . "component" "proxy") | fromYaml)) }}
{{- if eq .Values.proxy.podAntiAffinity "soft" }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- else if eq .Values.proxy.podAntiAffinity "hard" }}
{{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) }}
{{- end }}
{{- toYaml $affinity }}
{{- end }}
