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
