{{/*
Names, labels and the checks every template relies on.
*/}}

{{- define "regionvault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "regionvault.fullname" -}}
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

{{- define "regionvault.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "regionvault.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Labels that select a component's pods; never change them on upgrade. */}}
{{- define "regionvault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regionvault.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .domain }}
regionvault.io/domain: {{ . }}
{{- end }}
{{- end }}

{{/* All labels of an object: call with (dict "root" $ "component" "worker" "domain" "eu"). */}}
{{- define "regionvault.labels" -}}
helm.sh/chart: {{ include "regionvault.chart" .root }}
{{ include "regionvault.selectorLabels" . }}
app.kubernetes.io/part-of: regionvault
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Name of a domain's worker objects: <fullname>-worker-<domain>. */}}
{{- define "regionvault.workerName" -}}
{{- printf "%s-worker-%s" (include "regionvault.fullname" .root) .domain | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where a domain's Secret is mounted inside its workers. */}}
{{- define "regionvault.secretDir" -}}
/run/secrets/regionvault/{{ . }}
{{- end }}

{{/*
The domains the chart knows, in a fixed order. regionvault's own table (regionvault/domains.py)
is the authority on what lies inside each domain; the chart only refuses names it cannot serve.
*/}}
{{- define "regionvault.knownDomains" -}}
us eu au
{{- end }}

{{/*
Checks of a domain's values, with errors that name the value to fix. Call with
(dict "root" $ "name" "eu" "d" $domainValues); renders nothing.
*/}}
{{- define "regionvault.checkDomain" -}}
{{- $name := .name }}
{{- $d := .d }}
{{- if not (has $name (splitList " " (include "regionvault.knownDomains" .root))) }}
{{- fail (printf "domains.%s is not a regulatory domain of regionvault (domains: us, eu, au)" $name) }}
{{- end }}
{{- if $d.enabled }}
{{- if not $d.secretName }}
{{- fail (printf "domains.%s.secretName is empty: name the Secret holding domain %s's key and DSNs" $name $name) }}
{{- end }}
{{- if not $d.nodeRegions }}
{{- fail (printf "domains.%s.nodeRegions is empty: name the topology.kubernetes.io/region value(s) of the nodes inside domain %s, so that its workers never run outside it" $name $name) }}
{{- end }}
{{- if lt (int $d.concurrency) 1 }}
{{- fail (printf "domains.%s.concurrency must be at least 1" $name) }}
{{- end }}
{{- if $d.autoscaling.enabled }}
{{- if lt (int $d.autoscaling.minReplicas) 1 }}
{{- fail (printf "domains.%s.autoscaling.minReplicas must be at least 1: a pool scaled to zero would cut the steps it is running, whose messages are no longer in the list KEDA measures" $name) }}
{{- end }}
{{- if lt (int $d.autoscaling.maxReplicas) (int $d.autoscaling.minReplicas) }}
{{- fail (printf "domains.%s.autoscaling.maxReplicas is below minReplicas" $name) }}
{{- end }}
{{- end }}
{{- if not (has $d.spool.type (list "auto" "emptyDir" "pvc")) }}
{{- fail (printf "domains.%s.spool.type must be auto, emptyDir or pvc (got %v)" $name $d.spool.type) }}
{{- end }}
{{- if and (eq $d.spool.type "emptyDir") (not (include "regionvault.singlePod" $d)) }}
{{- fail (printf "domains.%s.spool.type emptyDir needs a single replica without autoscaling: the steps of one backup hand their files to each other through the spool, so every worker of the pool must share it (use pvc, ReadWriteMany)" $name) }}
{{- end }}
{{- range $d.sources }}
{{- if not (regexMatch "^[a-z0-9][a-z0-9-]{0,62}$" (toString .name)) }}
{{- fail (printf "domains.%s.sources: source name %q must match [a-z0-9][a-z0-9-]{0,62}" $name (toString .name)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when a pool is one pod without autoscaling (an emptyDir spool is then enough). */}}
{{- define "regionvault.singlePod" -}}
{{- if and (not .autoscaling.enabled) (le (int .replicas) 1) }}true{{- end }}
{{- end }}

{{/* The spool kind a domain gets: "emptyDir" or "pvc". */}}
{{- define "regionvault.spoolKind" -}}
{{- if eq .spool.type "auto" }}
{{- if include "regionvault.singlePod" . }}emptyDir{{ else }}pvc{{ end }}
{{- else }}
{{- .spool.type }}
{{- end }}
{{- end }}

{{/* Seconds Kubernetes waits for a worker to stop: the soft shutdown plus time to exit. */}}
{{- define "regionvault.workerGracePeriod" -}}
{{- if .Values.worker.terminationGracePeriodSeconds }}
{{- int .Values.worker.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int .Values.worker.softShutdownTimeoutSeconds) 120 }}
{{- end }}
{{- end }}

{{/* Environment every regionvault container shares: configuration and broker credentials. */}}
{{- define "regionvault.commonEnv" -}}
- name: REGIONVAULT_CONFIG
  value: /etc/regionvault/config.yaml
{{- with .Values.broker.existingSecret }}
- name: REGIONVAULT_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.broker.urlKey }}
{{- if $.Values.broker.resultBackendKey }}
- name: REGIONVAULT_RESULT_BACKEND
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.broker.resultBackendKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* The configuration volume (the generated ConfigMap) and a writable /tmp. */}}
{{- define "regionvault.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "regionvault.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end }}

{{- define "regionvault.commonVolumeMounts" -}}
- name: config
  mountPath: /etc/regionvault
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Egress every component needs: cluster DNS and the broker. */}}
{{- define "regionvault.baseEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dnsPeers | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- to:
    {{- toYaml .Values.broker.networkPeers | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ int .Values.broker.port }}}
{{- end }}
