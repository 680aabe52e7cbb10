{{/*
Names are fixed rather than derived from the release: kubespiffed's certificate carries its Service's DNS
names (--service-name), the CRDs, ClusterRole and webhook configuration are cluster-wide, and
deploy/manifests/rbac.yaml is rendered from this chart. One release per cluster.
*/}}
{{- define "kubespiffe.name" -}}kubespiffed{{- end -}}
{{- define "kubespiffe.clusterRoleName" -}}kubespiffe:kubespiffed{{- end -}}
{{- define "kubespiffe.bundleServiceName" -}}kubespiffed-bundle{{- end -}}
{{- define "kubespiffe.webhookName" -}}kubespiffe-injector{{- end -}}
{{- define "kubespiffe.authoritySecret" -}}kubespiffe-authority{{- end -}}

{{- define "kubespiffe.selectorLabels" -}}
app.kubernetes.io/name: kubespiffe
app.kubernetes.io/component: kubespiffed
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubespiffe.labels" -}}
{{ include "kubespiffe.selectorLabels" . }}
app.kubernetes.io/part-of: kubespiffe
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubespiffe.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kubespiffe.agentImage" -}}
{{- $agent := .Values.injection.agent.image -}}
{{ $agent.repository | default .Values.image.repository }}:{{ $agent.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
A duration (1h, 30m, 90s, 1h30m: the schema checks the form) in seconds.
*/}}
{{- define "kubespiffe.seconds" -}}
{{- $h := regexFind "[0-9]+h" . | trimSuffix "h" | default "0" | atoi -}}
{{- $m := regexFind "[0-9]+m" . | trimSuffix "m" | default "0" | atoi -}}
{{- $s := regexFind "[0-9]+s" . | trimSuffix "s" | default "0" | atoi -}}
{{- add (mul $h 3600) (mul $m 60) $s -}}
{{- end -}}

{{/*
The duration at key path (a list: value name, value, lowest seconds, highest seconds, bounds as text),
refused unless within kubespiffed's bounds (server/config.py). JSON Schema can check a duration's form but
not compare durations, so the bounds are checked here, before kubespiffed would refuse to start.
*/}}
{{- define "kubespiffe.duration" -}}
{{- $name := index . 0 -}}
{{- $value := index . 1 | toString -}}
{{- $seconds := include "kubespiffe.seconds" $value | atoi -}}
{{- if or (lt $seconds (index . 2)) (gt $seconds (index . 3)) -}}
{{- fail (printf "%s: %s is out of bounds: it must be between %s" $name $value (index . 4)) -}}
{{- end -}}
{{- $value -}}
{{- end -}}

{{/*
kubespiffed's flags. Each one exists in src/kubespiffe/server/config.py (a test parses them with it),
except --pod-certificate-signer, which the PodCertificateRequest signer adds.
*/}}
{{- define "kubespiffe.args" -}}
{{- $v := .Values -}}
{{- $args := list
  (printf "--trust-domain=%s" $v.trustDomain)
  (printf "--service-name=%s" (include "kubespiffe.name" .))
  (printf "--authority-secret=%s" (include "kubespiffe.authoritySecret" .))
  (printf "--audience=%s" $v.audience) -}}
{{- with $v.tokenIssuer }}{{ $args = append $args (printf "--token-issuer=%s" .) }}{{ end -}}
{{- $args = concat $args (list
  (printf "--ca-key-type=%s" $v.ca.keyType)
  (printf "--ca-ttl=%s" (include "kubespiffe.duration" (list "ca.ttl" $v.ca.ttl 3600 315360000 "1h and 87600h")))
  (printf "--x509-svid-ttl=%s" (include "kubespiffe.duration" (list "svid.x509TTL" $v.svid.x509TTL 60 2592000 "1m and 720h")))
  (printf "--jwt-svid-ttl=%s" (include "kubespiffe.duration" (list "svid.jwtTTL" $v.svid.jwtTTL 30 86400 "30s and 24h")))
  (printf "--jwt-key-type=%s" $v.svid.jwtKeyType)) -}}
{{- with $v.svid.jwtIssuer }}{{ $args = append $args (printf "--jwt-issuer=%s" .) }}{{ end -}}
{{- if $v.oidc.enabled -}}
{{- if and $v.svid.jwtIssuer (ne $v.svid.jwtIssuer $v.oidc.issuer) -}}
{{- fail "svid.jwtIssuer differs from oidc.issuer: with oidc.enabled JWT-SVIDs carry oidc.issuer; leave svid.jwtIssuer empty" -}}
{{- end -}}
{{- $args = concat $args (list
  (printf "--oidc-port=%d" (int $v.oidc.port))
  (printf "--oidc-issuer=%s" $v.oidc.issuer)
  (printf "--oidc-tls-secret=%s" $v.oidc.tlsSecretName)) -}}
{{- end -}}
{{- if $v.bundleEndpoint.enabled -}}
{{- $args = append $args (printf "--bundle-endpoint-port=%d" (int $v.bundleEndpoint.port)) -}}
{{- if eq $v.bundleEndpoint.profile "https_web" -}}
{{- $args = append $args (printf "--bundle-endpoint-web-secret=%s" $v.bundleEndpoint.webSecretName) -}}
{{- end -}}
{{- else -}}
{{- $args = append $args "--bundle-endpoint-port=0" -}}
{{- end -}}
{{- $args = concat $args (list
  (printf "--bundle-refresh-hint=%s" (include "kubespiffe.duration" (list "bundleEndpoint.refreshHint" $v.bundleEndpoint.refreshHint 1 86400 "1s and 24h")))
  (printf "--bundle-configmap=%s" $v.bundleConfigMap)
  (printf "--bundle-configmap-key=%s" $v.bundleConfigMapKey)
  (printf "--federation-min-refresh=%s" (include "kubespiffe.duration" (list "federation.minRefresh" $v.federation.minRefresh 1 3600 "1s and 1h")))
  (printf "--federation-max-refresh=%s" (include "kubespiffe.duration" (list "federation.maxRefresh" $v.federation.maxRefresh 1 86400 "1s and 24h")))
  (printf "--token-review-rate=%d" (int $v.bounds.tokenReviewRate))
  (printf "--max-streams-per-pod=%d" (int $v.bounds.streamsPerPod))
  (printf "--max-concurrent-rpcs=%d" (int $v.bounds.concurrentRPCs))
  (printf "--grpc-max-connection-idle=%s" (include "kubespiffe.duration" (list "bounds.connectionIdle" $v.bounds.connectionIdle 1 86400 "1s and 24h")))
  (printf "--grpc-handshake-timeout=%s" (include "kubespiffe.duration" (list "bounds.handshakeTimeout" $v.bounds.handshakeTimeout 1 300 "1s and 5m")))) -}}
{{- with $v.federation.allowedNetworks }}{{ $args = append $args (printf "--federation-allowed-networks=%s" (join "," .)) }}{{ end -}}
{{- if $v.injection.enabled -}}
{{- if not $v.bundleConfigMap -}}
{{- fail "injection.enabled needs bundleConfigMap: the injected agent mounts it as its bootstrap trust bundle" -}}
{{- end -}}
{{- if $v.injection.agent.server -}}
{{- $args = append $args (printf "--agent-server=%s" $v.injection.agent.server) -}}
{{- else if ne (int $v.service.port) 443 -}}
{{- $args = append $args (printf "--agent-server=%s.%s.svc:%d" (include "kubespiffe.name" .) .Release.Namespace (int $v.service.port)) -}}
{{- end -}}
{{- $args = concat $args (list
  (printf "--webhook-port=%d" (int $v.injection.port))
  (printf "--webhook-configuration=%s" (include "kubespiffe.webhookName" .))
  (printf "--agent-image=%s" (include "kubespiffe.agentImage" .))
  (printf "--agent-image-pull-policy=%s" $v.injection.agent.image.pullPolicy)
  (printf "--agent-resources=%s" ($v.injection.agent.resources | toJson))) -}}
{{- end -}}
{{- if $v.podCertificates.enabled -}}
{{- $args = append $args (printf "--pod-certificate-signer=%s" $v.podCertificates.signerName) -}}
{{- end -}}
{{- if and $v.upstreamAuthority.secret $v.upstreamAuthority.certManagerIssuer -}}
{{- fail "upstreamAuthority: set secret or certManagerIssuer, not both" -}}
{{- end -}}
{{- with $v.upstreamAuthority.secret }}{{ $args = append $args (printf "--upstream-ca-secret=%s" .) }}{{ end -}}
{{- with $v.upstreamAuthority.certManagerIssuer }}{{ $args = append $args (printf "--upstream-cert-manager-issuer=%s" .) }}{{ end -}}
{{- if gt (int ($v.workers | default 1)) 1 }}{{ $args = append $args (printf "--workers=%d" (int $v.workers)) }}{{ end -}}
{{- toYaml $args -}}
{{- end -}}
