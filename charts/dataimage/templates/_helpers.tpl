{{/* The prefix of the objects' names: the release name, or fullnameOverride. */}}
{{- define "dataimage.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; component is given as the argument's second element. */}}
{{- define "dataimage.labels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: dataimage
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: dataimage
{{- with index . 1 }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* Selector labels of a component's pods. */}}
{{- define "dataimage.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: dataimage
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* An image reference from images.<name>; an empty tag is the chart's appVersion. A tag given
as a number (--set images.plugin.tag=7) is written as one. */}}
{{- define "dataimage.image" -}}
{{- $root := index . 0 -}}
{{- $img := index $root.Values.images (index . 1) -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag | toString) -}}
{{- end -}}

{{/* The directory of the kubelet's plugin sockets for this driver. */}}
{{- define "dataimage.pluginDir" -}}
{{- printf "%s/plugins/csi.dataimage.io" (trimSuffix "/" .Values.node.kubeletDir) -}}
{{- end -}}

{{/* The host directory of the data plane's socket: shared by the data plane (which sees it
under node.exportStateDir) and the plugin (which mounts it alone). */}}
{{- define "dataimage.dataplaneSocketDir" -}}
{{- printf "%s/dataplane" (trimSuffix "/" .Values.node.exportStateDir) -}}
{{- end -}}

{{/* The host directory of the FUSE holder's socket: shared by the holder (which mounts it
alone) and the data plane (which sees it under node.exportStateDir). */}}
{{- define "dataimage.fuseHolderSocketDir" -}}
{{- printf "%s/fuse-holder" (trimSuffix "/" .Values.node.exportStateDir) -}}
{{- end -}}

{{/* Adds helm.sh/resource-policy: keep to a CRD read from a file and prints it. */}}
{{- define "dataimage.keptCRD" -}}
{{- $crd := fromYaml . -}}
{{- $meta := $crd.metadata -}}
{{- $ann := default (dict) $meta.annotations -}}
{{- $_ := set $ann "helm.sh/resource-policy" "keep" -}}
{{- $_ := set $meta "annotations" $ann -}}
{{ toYaml $crd }}
{{- end -}}

{{/* The registry flags of the plugin and the controller (registry.*), one "- --flag" a line. */}}
{{- define "dataimage.registryArgs" -}}
{{- with .Values.registry }}
{{- if .url }}
{{- if not (or (hasPrefix "s3://" .url) (hasPrefix "file:///" .url)) }}
{{- fail (printf "registry.url %q: want s3://bucket/prefix or file:///dir" .url) }}
{{- end }}
{{- if and (hasPrefix "file://" .url) (not .directory) }}
{{- fail "registry.directory: a file:// registry needs the volume that holds the directory" }}
{{- end }}
{{- if and .caBundle.configMap .caBundle.secret }}
{{- fail "registry.caBundle: configMap and secret exclude each other" }}
{{- end }}
- --registry={{ .url }}
{{- with .endpoint }}
- --registry-endpoint={{ . }}
{{- end }}
{{- with .region }}
- --registry-region={{ . }}
{{- end }}
{{- if .pathStyle }}
- --registry-path-style=true
{{- end }}
{{- if or .caBundle.configMap .caBundle.secret }}
- --registry-ca-file=/etc/dataimage/registry-ca/{{ .caBundle.key }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The registry's credentials, as environment variables from registry.credentialsSecret. */}}
{{- define "dataimage.registryEnv" -}}
{{- if and .Values.registry.url .Values.registry.credentialsSecret }}
{{- range $key := list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.registry.credentialsSecret }}
      key: {{ $key }}
      {{- if eq $key "AWS_SESSION_TOKEN" }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The registry's volume mounts: the CA bundle, the directory of a file:// registry. */}}
{{- define "dataimage.registryMounts" -}}
{{- with .Values.registry }}
{{- if .url }}
{{- if or .caBundle.configMap .caBundle.secret }}
- name: registry-ca
  mountPath: /etc/dataimage/registry-ca
  readOnly: true
{{- end }}
{{- if hasPrefix "file://" .url }}
- name: registry-dir
  mountPath: {{ trimPrefix "file://" .url }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The registry's volumes. */}}
{{- define "dataimage.registryVolumes" -}}
{{- with .Values.registry }}
{{- if .url }}
{{- if .caBundle.configMap }}
- name: registry-ca
  configMap:
    name: {{ .caBundle.configMap }}
{{- else if .caBundle.secret }}
- name: registry-ca
  secret:
    secretName: {{ .caBundle.secret }}
{{- end }}
{{- if hasPrefix "file://" .url }}
- name: registry-dir
  {{- toYaml .directory | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
