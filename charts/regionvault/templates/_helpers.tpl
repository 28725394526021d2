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

{{/* Environment every regionvault container shares: configuration and, for the shared broker,
its credentials (with broker.perDomain the chart refuses broker.existingSecret: no pod uses it). */}}
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

{{/*
The credentials of domain D's own broker (broker.perDomain, domains.D.broker.existingSecret),
for D's processes only: call with (dict "root" $ "domain" D) in D's worker, beat and Flower
containers; renders nothing for the shared broker or a broker without a Secret. regionvault
reads REGIONVAULT_BROKER_URL_<D> and REGIONVAULT_RESULT_BACKEND_<D> over domains.D.broker_url
and result_backend (regionvault/config.py DOMAIN_ENV_OVERRIDES), so the ConfigMap keeps a URL
without credentials and the password reaches D's pods and no other's.
*/}}
{{- define "regionvault.domainBrokerEnv" -}}
{{- if and .root.Values.broker.perDomain .domain }}
{{- $b := (get .root.Values.domains .domain).broker }}
{{- with $b.existingSecret }}
# The URL of domain {{ $.domain }}'s broker with its password (over the ConfigMap's).
- name: REGIONVAULT_BROKER_URL_{{ upper $.domain }}
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $b.urlKey }}
{{- if $b.resultBackendKey }}
- name: REGIONVAULT_RESULT_BACKEND_{{ upper $.domain }}
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $b.resultBackendKey }}
{{- end }}
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

{{/*
Egress every component needs: cluster DNS and its broker. Call with (dict "root" $ "domain" D):
a process of domain D with broker.perDomain reaches D's broker (domains.D.broker.networkPeers,
on the port of its URL) and no other; otherwise the shared broker.
*/}}
{{- define "regionvault.baseEgress" -}}
{{- $root := .root }}
- to:
    {{- toYaml $root.Values.networkPolicy.dnsPeers | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- if and $root.Values.broker.perDomain .domain }}
{{- $b := (get $root.Values.domains .domain).broker }}
# The broker of domain {{ .domain }}, and no other domain's.
- to:
    {{- toYaml $b.networkPeers | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ include "regionvault.urlPort" $b.url }}}
{{- else }}
- to:
    {{- toYaml $root.Values.broker.networkPeers | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ int $root.Values.broker.port }}}
{{- end }}
{{- $t := include "regionvault.tracing" (dict "root" $root "domain" .domain) | fromJson }}
{{- with $t.endpoint }}
{{- if not $t.peers }}
{{- fail (printf "traces go to %s, but no networkPeers say where that collector runs (tracing.networkPeers, or domains.<d>.tracing.networkPeers beside its otlpEndpoint): the NetworkPolicies would drop every span" .) }}
{{- end }}
# The OpenTelemetry collector these pods send traces to.
- to:
    {{- toYaml $t.peers | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ include "regionvault.httpPort" . }}}
{{- end }}
{{- end }}

{{/* The port of a redis:// or rediss:// URL (6379 when it names none). */}}
{{- define "regionvault.urlPort" -}}
{{- $host := (urlParse .).host }}
{{- if regexMatch ":[0-9]+$" $host }}{{ regexFind "[0-9]+$" $host }}{{ else }}6379{{ end }}
{{- end }}

{{/* host:port of a redis:// or rediss:// URL (port 6379 when it names none). */}}
{{- define "regionvault.urlHostPort" -}}
{{- $host := (urlParse .).host }}
{{- if regexMatch ":[0-9]+$" $host }}{{ $host }}{{ else }}{{ printf "%s:6379" $host }}{{ end }}
{{- end }}

{{/*
The brokers the installation runs on, as a JSON list: the enabled domains' names with
broker.perDomain, else [""] (the shared broker). Beat and Flower are rendered once per entry:
  range $domain := fromJsonArray (include "regionvault.brokerDomains" $)
*/}}
{{- define "regionvault.brokerDomains" -}}
{{- if .Values.broker.perDomain }}
{{- $names := list }}
{{- range $name := splitList " " (include "regionvault.knownDomains" .) }}
{{- $d := get $.Values.domains $name }}
{{- if and $d $d.enabled }}{{ $names = append $names $name }}{{ end }}
{{- end }}
{{- toJson $names }}
{{- else }}
{{- toJson (list "") }}
{{- end }}
{{- end }}

{{/*
Where domain D's own Flower is opened (its flower_url): domains.D.flower.url, else the address
of its Ingress host, else nothing. Call with (dict "root" $ "d" $domainValues).
*/}}
{{- define "regionvault.flowerUrl" -}}
{{- $f := .d.flower }}
{{- if $f.url }}
{{- $f.url }}
{{- else if and $f.host .root.Values.flower.ingress.enabled }}
{{- $prefix := trimAll "/" .root.Values.flower.urlPrefix }}
{{- printf "%s://%s%s" (ternary "https" "http" (not (empty $f.tlsSecretName))) $f.host (ternary "" (printf "/%s" $prefix) (empty $prefix)) }}
{{- end }}
{{- end }}

{{/*
Checks of broker.perDomain across the domains, with errors that name the value to fix. Renders
nothing. A domain broker's URL goes into the ConfigMap, so it may not carry credentials (they
come from domains.<name>.broker.existingSecret, which must be that domain's alone); two domains
on one host:port would be the shared topology under another name; and the shared broker's
credentials are refused rather than ignored.
*/}}
{{- define "regionvault.checkBrokers" -}}
{{- if .Values.broker.perDomain }}
{{- if .Values.broker.existingSecret }}
{{- fail "broker.existingSecret is set, but with broker.perDomain every pod connects to its own domain's broker (domains.<name>.broker.url) and none would use it: remove broker.existingSecret (a domain's broker takes its credentials from domains.<name>.broker.existingSecret)" }}
{{- end }}
{{- if .Values.keda.passwordSecret }}
{{- fail "keda.passwordSecret is set, but with broker.perDomain each pool's KEDA trigger reads its own domain's broker (domains.<name>.broker), with the password from domains.<name>.broker.existingSecret (key passwordKey): remove keda.passwordSecret" }}
{{- end }}
{{- $seen := dict }}
{{- range $name := fromJsonArray (include "regionvault.brokerDomains" .) }}
{{- $b := (get $.Values.domains $name).broker }}
{{- range $field, $url := dict "url" $b.url "resultBackend" $b.resultBackend }}
{{- if $url }}
{{- $u := urlParse $url }}
{{- if not (has $u.scheme (list "redis" "rediss")) }}
{{- fail (printf "domains.%s.broker.%s must be a redis:// or rediss:// URL (got %q)" $name $field $url) }}
{{- end }}
{{- if and (eq $u.scheme "rediss") (not (regexMatch "(^|&)ssl_cert_reqs=" $u.query)) }}
{{- fail (printf "domains.%s.broker.%s is a rediss:// URL without ssl_cert_reqs, which Celery refuses: add ?ssl_cert_reqs=required" $name $field) }}
{{- end }}
{{- if $u.userinfo }}
{{- fail (printf "domains.%s.broker.%s carries a user or password, but it is written into a ConfigMap: give the URL without credentials there, and the URL with them in a Secret named by domains.%s.broker.existingSecret (key urlKey, or resultBackendKey for the result backend)" $name $field $name) }}
{{- end }}
{{- $hostPort := include "regionvault.urlHostPort" $url }}
{{- $owner := get $seen $hostPort }}
{{- if and $owner (ne $owner $name) }}
{{- fail (printf "domains.%s.broker and domains.%s.broker are both %s: with broker.perDomain each domain has a broker of its own (or set broker.perDomain false for one shared broker)" $owner $name $hostPort) }}
{{- end }}
{{- $_ := set $seen $hostPort $name }}
{{- end }}
{{- end }}
{{- if not $b.url }}
{{- fail (printf "domains.%s.broker.url is empty: with broker.perDomain each enabled domain needs its own broker" $name) }}
{{- end }}
{{- if not $b.networkPeers }}
{{- fail (printf "domains.%s.broker.networkPeers is empty: name where domain %s's broker runs, so that its pods may reach it (and no other broker)" $name $name) }}
{{- end }}
{{- $secret := $b.existingSecret }}
{{- if $secret }}
{{- if not $b.urlKey }}
{{- fail (printf "domains.%s.broker.urlKey is empty: name the key of Secret %s holding domain %s's broker URL with its password" $name $secret $name) }}
{{- end }}
{{- if and $b.resultBackendKey (not $b.resultBackend) }}
{{- fail (printf "domains.%s.broker.resultBackendKey is set but resultBackend is empty: give the result backend's URL without credentials in resultBackend too (the ConfigMap and the NetworkPolicies name its host)" $name) }}
{{- end }}
{{- range $other, $od := $.Values.domains }}
{{- if eq $secret $od.secretName }}
{{- if eq $other $name }}
{{- fail (printf "domains.%s.broker.existingSecret is %s, the domain's own Secret (its key and DSNs): beat and Flower would read it too; put the broker's credentials in a Secret of their own" $name $secret) }}
{{- else }}
{{- fail (printf "domains.%s.broker.existingSecret is %s, domain %s's Secret: a domain's broker credentials go in a Secret of that domain alone" $name $secret $other) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $other := fromJsonArray (include "regionvault.brokerDomains" $) }}
{{- if and (ne $other $name) (eq $secret (toString (get $.Values.domains $other).broker.existingSecret)) }}
{{- fail (printf "domains.%s.broker.existingSecret and domains.%s.broker.existingSecret are both %s: each domain's broker credentials go in a Secret of that domain alone, read by no other domain's pods" $other $name $secret) }}
{{- end }}
{{- end }}
{{- else if $b.resultBackendKey }}
{{- fail (printf "domains.%s.broker.resultBackendKey is set but existingSecret is empty: name the Secret that holds it" $name) }}
{{- end }}
{{- if and $.Values.keda.enabled (get $.Values.domains $name).autoscaling.enabled $b.existingSecret (not $b.passwordKey) }}
{{- fail (printf "domains.%s.broker.passwordKey is empty, but KEDA scales domain %s's pool and its redis trigger needs the broker's password on its own: add it under a key of Secret %s and name that key" $name $name $b.existingSecret) }}
{{- end }}
{{- if and $.Values.flower.enabled $.Values.flower.ingress.enabled (not (get $.Values.domains $name).flower.host) }}
{{- fail (printf "domains.%s.flower.host is empty: with broker.perDomain and flower.ingress.enabled each domain's Flower is served under a host of its own" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The required node affinity that keeps a pod of domain D on nodes inside D. */}}
{{- define "regionvault.regionAffinity" -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      - matchExpressions:
          - key: topology.kubernetes.io/region
            operator: In
            values:
              {{- toYaml . | nindent 14 }}
{{- end }}

{{/*
Where a process sends its traces, as JSON {"endpoint": URL or "", "peers": [NetworkPolicyPeer]}:
its domain's own collector (domains.<d>.tracing.otlpEndpoint) when it serves a domain that
names one, else tracing.otlpEndpoint. Traces carry backup ids and source names, so a domain
whose metadata must stay in the domain names a collector inside it. Call with
(dict "root" $ "domain" D), D "" for a process of the shared broker.
*/}}
{{- define "regionvault.tracing" -}}
{{- $endpoint := .root.Values.tracing.otlpEndpoint }}
{{- $peers := .root.Values.tracing.networkPeers | default list }}
{{- if .domain }}
{{- $d := get .root.Values.domains .domain }}
{{- with (dig "tracing" "otlpEndpoint" "" $d) }}
{{- $endpoint = . }}
{{- $peers = dig "tracing" "networkPeers" list $d }}
{{- end }}
{{- end }}
{{- dict "endpoint" $endpoint "peers" $peers | toJson }}
{{- end }}

{{/* The port of an http:// or https:// URL (80 or 443 when it names none). */}}
{{- define "regionvault.httpPort" -}}
{{- $u := urlParse . }}
{{- if regexMatch ":[0-9]+$" $u.host }}{{ regexFind "[0-9]+$" $u.host }}{{ else if eq $u.scheme "https" }}443{{ else }}80{{ end }}
{{- end }}

{{/*
OpenTelemetry settings of a regionvault container (regionvault/tracing.py exports traces when
OTEL_EXPORTER_OTLP_ENDPOINT is set); nothing when the process has no collector
("regionvault.tracing"). Call with (dict "root" $ "service" "regionvault-worker" "domain" D):
D ("" for a process of the shared broker) becomes the resource attribute regionvault.domain,
so a trace names its domain.
*/}}
{{- define "regionvault.tracingEnv" -}}
{{- $t := include "regionvault.tracing" (dict "root" .root "domain" .domain) | fromJson }}
{{- with $t.endpoint }}
{{- if ne (toString $.root.Values.tracing.protocol) "http/protobuf" }}
{{- fail (printf "tracing.protocol is %q, but regionvault sends traces with the OTLP/HTTP exporter (regionvault/tracing.py): set it to http/protobuf and otlpEndpoint to the collector's HTTP port (4318)" (toString $.root.Values.tracing.protocol)) }}
{{- end }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $.root.Values.tracing.protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $.service | quote }}
{{- with $.domain }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "regionvault.domain=%s" . | quote }}
{{- end }}
{{- end }}
{{- end }}
