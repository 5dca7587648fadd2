{{/* Chart name, cut to the 63 characters a label value may have. */}}
{{- define "spacegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: RELEASE-spacegate, or the release name when it already holds the chart name. */}}
{{- define "spacegate.fullname" -}}
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

{{- define "spacegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "spacegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "spacegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spacegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spacegate.tlsSecret" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "spacegate.fullname" .)) }}
{{- end }}

{{- define "spacegate.caSecret" -}}
{{- .Values.spaceCA.secretName | default (printf "%s-space-ca" (include "spacegate.fullname" .)) }}
{{- end }}

{{- define "spacegate.adminTokenSecret" -}}
{{- .Values.admin.token.existingSecret | default (printf "%s-admin-token" (include "spacegate.fullname" .)) }}
{{- end }}

{{/*
spacegate.fleetService: the headless Service that lists every ready gate's
admin endpoint; spacegate.fleetDNS: the admin.fleet entry that reaches it.
*/}}
{{- define "spacegate.fleetService" -}}
{{- printf "%s-fleet" (include "spacegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spacegate.fleetDNS" -}}
{{- printf "dns:%s.%s.svc.%s:%d" (include "spacegate.fleetService" .) .Release.Namespace .Values.clusterDomain (int .Values.admin.port) }}
{{- end }}

{{- define "spacegate.rulesConfigMap" -}}
{{- .Values.existingRulesConfigMap | default (printf "%s-rules" (include "spacegate.fullname" .)) }}
{{- end }}

{{/*
spacegate.ports: the distinct listen ports of the routes, as YAML
{"PORT": "NAME"}, NAME being a valid port name (pg-5432, redis-6380).
Routes that share a port (SNI) must speak one protocol.
*/}}
{{- define "spacegate.ports" -}}
{{- $ports := dict }}
{{- range .Values.routes }}
{{- if not .port }}{{ fail (printf "route %s: set port, the port the gate listens on" .name) }}{{ end }}
{{- $short := ternary "pg" "redis" (eq .protocol "postgres") }}
{{- $key := toString (int .port) }}
{{- $name := printf "%s-%s" $short $key }}
{{- if and (hasKey $ports $key) (ne (get $ports $key) $name) }}
{{- fail (printf "route %s: port %s is shared by routes of different protocols" .name $key) }}
{{- end }}
{{- $_ := set $ports $key $name }}
{{- end }}
{{- toYaml $ports }}
{{- end }}

{{/* spacegate.needsLowPorts: "true" when a route listens below 1024. */}}
{{- define "spacegate.needsLowPorts" -}}
{{- range .Values.routes }}{{ if lt (int .port) 1024 }}true{{ end }}{{ end }}
{{- end }}

{{/*
spacegate.upstreamHost: the host of a route's upstream ("10.0.0.5",
"db.internal", "fd00::5").
*/}}
{{- define "spacegate.upstreamHost" -}}
{{- $u := .upstream | toString }}
{{- if hasPrefix "[" $u }}
{{- regexReplaceAll "^\\[(.*)\\]:[0-9]+$" $u "${1}" }}
{{- else }}
{{- regexReplaceAll ":[0-9]+$" $u "" }}
{{- end }}
{{- end }}

{{- define "spacegate.upstreamPort" -}}
{{- regexFind "[0-9]+$" (.upstream | toString) }}
{{- end }}

{{/* spacegate.isIP: "true" when the argument is an IPv4 or IPv6 address. */}}
{{- define "spacegate.isIP" -}}
{{- if or (regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" .) (contains ":" .) }}true{{ end }}
{{- end }}

{{/* spacegate.needsDNS: "true" when some upstream is named by DNS. */}}
{{- define "spacegate.needsDNS" -}}
{{- range .Values.routes }}
{{- if not (include "spacegate.isIP" (include "spacegate.upstreamHost" .)) }}true{{ end }}
{{- end }}
{{- end }}

{{- define "spacegate.terminationGrace" -}}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.shutdownDelaySeconds .Values.drain.drainTimeoutSeconds 10 }}
{{- end }}

{{/* spacegate.config: the gate's config file. */}}
{{- define "spacegate.config" -}}
{{- $routes := list }}
{{- range .Values.routes }}
{{- $r := omit . "port" "egressTo" }}
{{- $_ := set $r "listen" (printf "%s:%d" $.Values.listenHost (int .port)) }}
{{- $_ := set $r "ip_rules_file" (printf "/etc/spacegate/rules/%s.yaml" .name) }}
{{- $routes = append $routes $r }}
{{- end }}
{{- $tls := merge (dict
  "cert_file" "/etc/spacegate/tls/tls.crt"
  "key_file" "/etc/spacegate/tls/tls.key"
  "client_ca_file" "/etc/spacegate/space-ca/ca.crt") (.Values.config.tls | default dict) }}
{{- if .Values.spaceCA.useCRL }}
{{- $_ := set $tls "crl_file" "/etc/spacegate/space-ca/ca.crl" }}
{{- end }}
{{- range list "drain_timeout" "shutdown_delay" }}
{{- if hasKey ($.Values.config.limits | default dict) . }}
{{- fail (printf "config.limits.%s: set it with drain.%s instead, which the pod's shutdown timings follow" . (ternary "drainTimeoutSeconds" "shutdownDelaySeconds" (eq . "drain_timeout"))) }}
{{- end }}
{{- end }}
{{- $limits := merge (dict
  "shutdown_delay" (printf "%ds" (int .Values.drain.shutdownDelaySeconds))
  "drain_timeout" (printf "%ds" (int .Values.drain.drainTimeoutSeconds))) (.Values.config.limits | default dict) }}
{{- $admin := dict "listen" (printf "%s:%d" .Values.listenHost (int .Values.admin.port)) "token_file" "/etc/spacegate/admin/token" }}
{{- $_ := set $admin "fleet" (.Values.admin.fleet | default (list (include "spacegate.fleetDNS" .))) }}
{{- if .Values.admin.readyRequiresUpstream }}
{{- $_ := set $admin "ready_requires_upstream" true }}
{{- end }}
{{- $cfg := dict
  "admin" $admin
  "log" .Values.config.log
  "tls" $tls
  "pki" .Values.config.pki
  "proxy_protocol" .Values.config.proxy_protocol
  "limits" $limits
  "routes" $routes }}
{{- toYaml $cfg }}
{{- end }}
