{{/*
The MutatingWebhookConfiguration, with the safe settings: fail open (Ignore), 2 s
timeout, no side effects, reinvoked if another webhook changes the pod, v1 reviews,
and selectors that keep kube-system, Spillway's own namespace and own pods, and (by
default) every pod not labelled for bursting away from it.
Called with (dict "root" . "caBundle" B64) or (dict "root" . "injectFrom" "ns/cert").
*/}}
{{- define "spillway.mutatingWebhook" -}}
{{- $root := .root }}
{{- $fullname := include "spillway.fullname" $root }}
{{- $excluded := concat (list "kube-system" $root.Release.Namespace) $root.Values.webhook.excludeNamespaces | uniq }}
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "spillway.labels" $root | nindent 4 }}
  {{- with .injectFrom }}
  annotations:
    cert-manager.io/inject-ca-from: {{ . }}
  {{- end }}
webhooks:
- name: burst.spillway.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Ignore
  timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
  reinvocationPolicy: IfNeeded
  matchPolicy: Equivalent
  clientConfig:
    service:
      name: {{ include "spillway.webhookService" $root }}
      namespace: {{ $root.Release.Namespace }}
      path: /mutate
      port: 443
    {{- with .caBundle }}
    caBundle: {{ . }}
    {{- end }}
  rules:
  - apiGroups: [""]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [pods]
    scope: Namespaced
  namespaceSelector:
    matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ toJson $excluded }}
  objectSelector:
    {{- with $root.Values.webhook.objectSelector.matchLabels }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    matchExpressions:
    - key: app.kubernetes.io/part-of
      operator: NotIn
      values: [spillway]
    {{- with $root.Values.webhook.objectSelector.matchExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
