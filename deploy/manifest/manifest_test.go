package manifest

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestSplit(t *testing.T) {
	const stream = `# a comment-only document
---
---
# Source: dataimage/templates/a.yaml
apiVersion: v1
kind: ServiceAccount
metadata: {name: one, namespace: ns}
---
# Source: dataimage/templates/a.yaml
apiVersion: v1
kind: ServiceAccount
metadata: {name: two, namespace: ns}
---
apiVersion: v1
kind: Namespace
metadata: {name: ns}
`
	docs, err := Split("stream", []byte(stream))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range docs {
		got = append(got, d.String())
	}
	if want := "dataimage/templates/a.yaml#0 dataimage/templates/a.yaml#1 stream#0"; strings.Join(got, " ") != want {
		t.Fatalf("documents %q, want %q", got, want)
	}
	objs, err := DecodeAll(Scheme(), docs)
	if err != nil {
		t.Fatal(err)
	}
	sa, ok := objs[1].Value.(*corev1.ServiceAccount)
	if !ok || sa.Name != "two" || objs[1].Namespace != "ns" || objs[1].GVK.Kind != "ServiceAccount" {
		t.Fatalf("object %s: %#v", objs[1], objs[1].Value)
	}
	if s := objs[1].String(); s != "ServiceAccount ns/two (dataimage/templates/a.yaml#1)" {
		t.Errorf("String = %q", s)
	}
}

// TestDecodeErrors: each error names the document and matches ErrDecode; DecodeAll reports
// every failing document.
func TestDecodeErrors(t *testing.T) {
	docs, err := Split("bad.yaml", []byte(`kind: ConfigMap
metadata: {name: no-version}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
data: {a: b}
dta: {a: b}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: tab}
data:
	a: b
`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = DecodeAll(Scheme(), docs)
	if !errors.Is(err, ErrDecode) {
		t.Fatalf("DecodeAll: %v, want ErrDecode", err)
	}
	for _, want := range []string{
		`bad.yaml#0: apiVersion "" and kind "ConfigMap" do not name a kind`,
		`bad.yaml#1 (ConfigMap): unknown field "dta"`,
		`bad.yaml#2: no kind "Widget" is registered for version "example.com/v1"`,
		`bad.yaml#3: `,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeAll error lacks %q:\n%v", want, err)
		}
	}
}
