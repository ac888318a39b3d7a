{{/* Names, labels and the security settings every pod shares. */}}

{{- define "cancer-alpha.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "cancer-alpha.labels" -}}
app.kubernetes.io/name: cancer-alpha
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "site") */}}
{{- define "cancer-alpha.selector" -}}
app.kubernetes.io/name: cancer-alpha
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image reference: (dict "root" $ "name" "cancer-alpha-site") */}}
{{- define "cancer-alpha.image" -}}
{{- $v := .root.Values.image -}}
{{- if $v.registry }}{{ $v.registry }}/{{ end }}{{ .name }}:{{ $v.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{- define "cancer-alpha.podSecurity" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.uid }}
  runAsGroup: {{ .Values.uid }}
  fsGroup: {{ .Values.uid }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "cancer-alpha.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* A float as TOML/run-config always reads as a float (8.0, not 8). */}}
{{- define "cancer-alpha.float" -}}
{{- printf "%.12e" (float64 .) -}}
{{- end -}}

{{/* The coordinator's state claim (from the StatefulSet's volumeClaimTemplates). */}}
{{- define "cancer-alpha.coordinatorStateClaim" -}}
state-{{ include "cancer-alpha.fullname" . }}-coordinator-0
{{- end -}}

{{/* DNS egress, shared by every NetworkPolicy. */}}
{{- define "cancer-alpha.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}
