{{/* Names and labels shared by every template. */}}

{{- define "spillway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "spillway.labels" -}}
app.kubernetes.io/name: spillway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: spillway
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include with (list . "webhook"). */}}
{{- define "spillway.selector" -}}
app.kubernetes.io/name: spillway
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "spillway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "spillway.webhookService" -}}
{{ include "spillway.fullname" . }}-webhook
{{- end -}}

{{/* The restricted Pod Security profile, for every Spillway container. */}}
{{- define "spillway.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "spillway.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every Spillway process gets: log format, admin server on the pod IP. */}}
{{- define "spillway.commonEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef: {fieldPath: status.podIP}
- name: SPILLWAY_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: SPILLWAY_LOG
  value: {{ .Values.logFilter | quote }}
- name: SPILLWAY_ADMIN_ADDR
  value: {{ printf "0.0.0.0:%d" (int .Values.admin.port) | quote }}
- name: SPILLWAY_CONFIG
  value: /etc/spillway/config/config.yaml
{{- end -}}

{{- define "spillway.probes" -}}
livenessProbe:
  httpGet: {path: /livez, port: admin}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{/* Spread replicas of one component across nodes. */}}
{{- define "spillway.spread" -}}
topologySpreadConstraints:
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "spillway.selector" . | nindent 6 }}
{{- end -}}

{{/* Render-time checks the schema cannot express (they span keys); each names the key
at fault and what to do. Included by the controller's template. */}}
{{- define "spillway.validate" -}}
{{- $c := .Values.controller -}}
{{- if $c.providers -}}
{{- $default := toString .Values.config.defaultProvider -}}
{{- if eq $default "auto" -}}
{{- if not (or (has "fargate" $c.providers) (has "aci" $c.providers)) -}}
{{- fail "config.defaultProvider: auto picks among fargate and aci, and controller.providers runs neither" -}}
{{- end -}}
{{- else -}}
{{- range splitList "," $default -}}
{{- if not (has . $c.providers) -}}
{{- fail (printf "config.defaultProvider: %s is not in controller.providers (%s): burst pods would wait for a virtual node that never comes; add it to controller.providers or name one that is there" . (join ", " $c.providers)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if has "fargate" $c.providers -}}
{{- if not $c.fargate.executionRoleArn -}}
{{- fail "controller.fargate.executionRoleArn: required when controller.providers includes fargate (the task execution role Fargate sends container output to CloudWatch Logs and reads secrets with; docs/eks.md)" -}}
{{- end -}}
{{- if not $c.fargate.subnets -}}
{{- fail "controller.fargate.subnets: at least one subnet id is required when controller.providers includes fargate (the subnets burst tasks get their ENIs in; docs/eks.md)" -}}
{{- end -}}
{{- if and $c.fargate.enableExec (not $c.fargate.taskRoleArn) -}}
{{- fail "controller.fargate.enableExec: needs controller.fargate.taskRoleArn, a task role allowed the ssmmessages actions (docs/eks.md)" -}}
{{- end -}}
{{- if not $c.fargate.securityGroups -}}
{{- fail "controller.fargate.securityGroups: at least one security group id is required when controller.providers includes fargate (it must let the cluster reach the pods; docs/eks.md)" -}}
{{- end -}}
{{- end -}}
{{- range $key, $_ := $c.virtualNode.labels -}}
{{- if has $key (list "type" "kubernetes.io/role" "kubernetes.io/os" "kubernetes.io/arch" "kubernetes.io/hostname" "spillway.io/provider" "node.kubernetes.io/exclude-from-external-load-balancers") -}}
{{- fail (printf "controller.virtualNode.labels: %s is set by Spillway on every virtual node and cannot be replaced" $key) -}}
{{- end -}}
{{- end -}}
{{- if has "aci" $c.providers -}}
{{- if not $c.aci.location -}}
{{- fail "controller.aci.location: required when controller.providers includes aci (the Azure region of the container groups, the AKS cluster's own; docs/aks.md)" -}}
{{- end -}}
{{- if not $c.aci.subnetIds -}}
{{- fail "controller.aci.subnetIds: at least one subnet id is required when controller.providers includes aci (a subnet delegated to Microsoft.ContainerInstance/containerGroups in the cluster's VNet; docs/aks.md)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount a component runs as: include with (list . "controller"). */}}
{{- define "spillway.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- (index $root.Values $component).serviceAccount.name | default (printf "%s-%s" (include "spillway.fullname" $root) $component) -}}
{{- end -}}

{{/* Pod-level settings from a component's values: priority, host network, DNS policy. */}}
{{- define "spillway.podExtras" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if .hostNetwork }}
hostNetwork: true
{{- end }}
{{- with .dnsPolicy }}
dnsPolicy: {{ . }}
{{- end }}
{{- end -}}
