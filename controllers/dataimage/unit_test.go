package dataimage

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/driver/wellknown"
	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// TestParseBuildLog: the log of a builder of format 1.0 (before versions), of this one, and of
// a newer one, mixed with lines that are not events.
func TestParseBuildLog(t *testing.T) {
	log := logLines(
		`{"step":"init","message":"initdb"}`,
		`time=2024-05-06T07:08:09Z level=INFO msg="restore"`,
		`{"time":"2024-05-06T07:08:09Z","level":"INFO","msg":"a JSON log line of the builder","step":"x"}`,
		`{"step":"restore","done":5,"total":10}`,
		``,
		`{"step":"restore","log":"LOG:  redo starts"}`,
		`{"step":"restore"} {"step":"two on a line"}`,
		`{"message":"no step"}`,
	)
	got := parseBuildLog(log)
	want := &wire.Event{Step: "restore", Log: "LOG:  redo starts"}
	if !reflect.DeepEqual(got.last, want) {
		t.Errorf("last event %+v, want %+v", got.last, want)
	}
	wantEngine := []string{
		`time=2024-05-06T07:08:09Z level=INFO msg="restore"`,
		`{"time":"2024-05-06T07:08:09Z","level":"INFO","msg":"a JSON log line of the builder","step":"x"}`,
		"LOG:  redo starts",
		`{"step":"restore"} {"step":"two on a line"}`,
		`{"message":"no step"}`,
	}
	if !reflect.DeepEqual(got.engine, wantEngine) || got.unreadable != nil {
		t.Errorf("log lines\n%q\nwant\n%q (unreadable: %v)", got.engine, wantEngine, got.unreadable)
	}
	if l := parseBuildLog(nil); l.last != nil || len(l.engine) != 0 {
		t.Errorf("empty log: %+v", l)
	}

	// This builder's events, and a newer one's: fields this controller does not know are
	// ignored, events of kinds it does not know skipped (neither event nor log).
	var now bytes.Buffer
	if err := json.NewEncoder(&now).Encode(wire.Event{Step: "restore", Message: "restoring", Total: 10}); err != nil {
		t.Fatal(err)
	}
	got = parseBuildLog(append(now.Bytes(), logLines(
		`{"buildEvent":"1.9","step":"restore","done":7,"total":10,"rate":3}`,
		`{"buildEvent":"1.9","step":"restore","log":"LOG:  x","source":"postgres"}`,
		`{"buildEvent":"1.9","kind":"warning","step":"restore","message":"slow disk"}`,
	)...))
	if want := (&wire.Event{Step: "restore", Log: "LOG:  x"}); !reflect.DeepEqual(got.last, want) {
		t.Errorf("newer minor: last event %+v, want %+v", got.last, want)
	}
	if !reflect.DeepEqual(got.engine, []string{"LOG:  x"}) || got.unreadable != nil {
		t.Errorf("newer minor: log lines %q (unreadable: %v)", got.engine, got.unreadable)
	}

	// Another major version: nothing is read, and the controller can say why.
	got = parseBuildLog(logLines(`{"buildEvent":"2.0","step":{"name":"restore"},"progress":0.5}`, `LOG:  plain`))
	if got.last != nil || !errors.Is(got.unreadable, wire.ErrUnsupportedVersion) || !reflect.DeepEqual(got.engine, []string{"LOG:  plain"}) {
		t.Errorf("newer major: %+v", got)
	}
}

func FuzzParseBuildLog(f *testing.F) {
	f.Add([]byte(`{"step":"restore","done":5,"total":10}` + "\n" + `{"step":"restore","log":"x"}` + "\r\n"))
	f.Add([]byte("{\n{}\n{\"step\":\"\"}\nnot json"))
	f.Fuzz(func(t *testing.T, b []byte) {
		l := parseBuildLog(b)
		if l.last != nil && l.last.Step == "" {
			t.Errorf("an event without a step: %+v", l.last)
		}
		for _, line := range l.engine {
			if strings.Contains(line, "\n") && (l.last == nil || l.last.Log != line) {
				t.Errorf("a log line of the log's own lines spans lines: %q", line)
			}
		}
	})
}

func terminatedPod(init, build *corev1.ContainerStateTerminated) *corev1.Pod {
	p := &corev1.Pod{Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: initContainerName, Image: "builder:1"}},
		Containers:     []corev1.Container{{Name: buildContainerName, Image: "postgres:16"}},
	}}
	if init != nil {
		p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: initContainerName, State: corev1.ContainerState{Terminated: init}}}
	}
	st := corev1.ContainerStatus{Name: buildContainerName, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	if build != nil {
		st.State = corev1.ContainerState{Terminated: build}
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{st}
	return p
}

func TestBuildResult(t *testing.T) {
	ok := string(wire.Outcome{OK: true, EngineVersion: "16.4"}.Encode())
	failed := string(wire.Outcome{Step: "restore", Message: "pg_restore failed", LogTail: "ERROR: x"}.Encode())
	end := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	term := func(code int32, msg string) *corev1.ContainerStateTerminated {
		return &corev1.ContainerStateTerminated{ExitCode: code, Reason: "Completed", Message: msg, FinishedAt: metav1.Time{Time: end}}
	}
	jobFailed := &batchv1.Job{Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{
		Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "DeadlineExceeded", Message: "Job was active longer than specified deadline"}}}}
	engineLog := []string{"LOG: a", "LOG: b"}
	for _, tc := range []struct {
		name    string
		job     *batchv1.Job
		pod     *corev1.Pod
		running bool
		ok      bool
		step    string
		message []string
		logTail string
	}{
		{name: "no pod yet", job: &batchv1.Job{}, running: true},
		{name: "running", job: &batchv1.Job{}, pod: terminatedPod(term(0, ""), nil), running: true},
		{name: "success", job: &batchv1.Job{}, pod: terminatedPod(term(0, ""), term(0, ok)), ok: true},
		{name: "failure with a result", job: &batchv1.Job{}, pod: terminatedPod(term(0, ""), term(1, failed)),
			step: "restore", message: []string{"pg_restore failed"}, logTail: "ERROR: x"},
		{name: "success reported, non-zero exit", job: &batchv1.Job{}, pod: terminatedPod(term(0, ""), term(2, ok)),
			step: "build", message: []string{"exited with code 2"}, logTail: "LOG: a\nLOG: b"},
		{name: "killed without a result", job: &batchv1.Job{}, pod: terminatedPod(term(0, ""), term(137, "")),
			step: "restore", message: []string{"code 137", "without a result"}, logTail: "LOG: a\nLOG: b"},
		{name: "garbage result", job: &batchv1.Job{}, pod: terminatedPod(term(0, ""), term(1, "panic: oops")),
			step: "restore", message: []string{"without a result", "termination message"}, logTail: "LOG: a\nLOG: b"},
		{name: "success of a newer minor format", job: &batchv1.Job{}, ok: true,
			pod: terminatedPod(term(0, ""), term(0, `{"buildOutcome":"1.3","ok":true,"engineVersion":"16.4","buildSeconds":12.5}`))},
		{name: "result of another major format", job: &batchv1.Job{},
			pod:  terminatedPod(term(0, ""), term(0, `{"buildOutcome":"2.0","result":{"ok":true}}`)),
			step: "restore", message: []string{"without a result", "the build outcome is in format 2.0; this version of Dataimage reads 1.x"}, logTail: "LOG: a\nLOG: b"},
		{name: "init container failed", job: &batchv1.Job{}, pod: terminatedPod(term(1, "cp: not found"), nil),
			step: initContainerName, message: []string{"builder:1", "code 1", "cp: not found"}},
		{name: "deadline without a pod", job: jobFailed,
			step: "restore", message: []string{"DeadlineExceeded", "longer than specified deadline"}, logTail: "LOG: a\nLOG: b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := buildResult(tc.job, tc.pod, "restore", engineLog)
			if tc.running {
				if r != nil {
					t.Fatalf("a running build has a result: %+v", r)
				}
				return
			}
			if r == nil {
				t.Fatal("no result")
			}
			if r.ok != tc.ok || r.step != tc.step || r.logTail != tc.logTail {
				t.Errorf("result ok %v step %q log tail %q, want %v %q %q", r.ok, r.step, r.logTail, tc.ok, tc.step, tc.logTail)
			}
			for _, m := range tc.message {
				if !strings.Contains(r.message, m) {
					t.Errorf("message %q lacks %q", r.message, m)
				}
			}
			if tc.pod != nil && !r.finished.Equal(end) {
				t.Errorf("finished %v, want %v", r.finished, end)
			}
			if tc.ok && (r.outcome == nil || r.outcome.EngineVersion != "16.4") {
				t.Errorf("outcome %+v", r.outcome)
			}
		})
	}
}

func TestBuildPod(t *testing.T) {
	old := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "old", CreationTimestamp: metav1.Unix(100, 0)}}
	newer := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "new", CreationTimestamp: metav1.Unix(200, 0)}}
	if p := buildPod([]corev1.Pod{old, newer}); p == nil || p.Name != "new" {
		t.Errorf("picked %v, want the newest", p)
	}
	ended := *terminatedPod(nil, &corev1.ContainerStateTerminated{ExitCode: 1})
	ended.Name = "ended"
	if p := buildPod([]corev1.Pod{newer, ended}); p == nil || p.Name != "ended" {
		t.Errorf("picked %v, want the one that ended", p)
	}
	if buildPod(nil) != nil {
		t.Error("a pod out of nothing")
	}
}

func TestTruncate(t *testing.T) {
	if s := truncate("short"); s != "short" {
		t.Errorf("%q", s)
	}
	long := strings.Repeat("é", maxMessage) + "END"
	s := truncate(long)
	if len(s) > maxMessage || !strings.HasPrefix(s, "...") || !strings.HasSuffix(s, "END") || !utf8.ValidString(s) {
		t.Errorf("truncate: %d bytes, prefix %q, suffix %q, valid %v", len(s), s[:5], s[len(s)-5:], utf8.ValidString(s))
	}
}

func TestCloneIndex(t *testing.T) {
	snap := ptr.To("snapshot.storage.k8s.io")
	other := "other"
	for _, tc := range []struct {
		name string
		spec corev1.PersistentVolumeClaimSpec
		want []string
	}{
		{"no source", corev1.PersistentVolumeClaimSpec{}, nil},
		{"dataSource and the same dataSourceRef", corev1.PersistentVolumeClaimSpec{
			DataSource:    &corev1.TypedLocalObjectReference{APIGroup: snap, Kind: "VolumeSnapshot", Name: "img"},
			DataSourceRef: &corev1.TypedObjectReference{APIGroup: snap, Kind: "VolumeSnapshot", Name: "img"},
		}, []string{"team/img"}},
		{"cross-namespace dataSourceRef", corev1.PersistentVolumeClaimSpec{
			DataSourceRef: &corev1.TypedObjectReference{APIGroup: snap, Kind: "VolumeSnapshot", Name: "img", Namespace: &other},
		}, []string{"other/img"}},
		{"a PVC clone", corev1.PersistentVolumeClaimSpec{
			DataSource: &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "img"},
		}, nil},
		{"another group", corev1.PersistentVolumeClaimSpec{
			DataSource: &corev1.TypedLocalObjectReference{APIGroup: ptr.To("example.com"), Kind: "VolumeSnapshot", Name: "img"},
		}, nil},
	} {
		pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "c"}, Spec: tc.spec}
		if got := cloneIndexValues(pvc); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestMakePlan(t *testing.T) {
	r := &reconciler{cfg: testConfig(t)}
	env, err := r.cfg.ValidationEnv()
	if err != nil {
		t.Fatal(err)
	}
	r.env = env
	size := resource.MustParse("5Gi")
	di := &v1alpha1.DataImage{
		ObjectMeta: metav1.ObjectMeta{Name: "img", Namespace: "team"},
		Spec: v1alpha1.DataImageSpec{
			Definition: imagebuilder.Definition{Name: "img", Engine: "PostgreSQL", Version: "15", SourceType: "backup",
				Backups: []imagebuilder.Backup{{Path: "a.sql"}}},
			BackupSource:     &v1alpha1.BackupSource{HostPath: &v1alpha1.HostPathBackupSource{Path: "/srv/backups", NodeName: "node-h"}},
			StorageClassName: ptr.To("fast"),
			VolumeSize:       &size,
			Builder: &v1alpha1.BuilderSpec{EngineImage: "mirror/pg:15.7", Image: "mirror/builder:2",
				ActiveDeadlineSeconds: ptr.To[int64](60),
				Resources:             &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")}}},
		},
	}
	p, err := r.makePlan(di)
	if err != nil {
		t.Fatal(err)
	}
	if p.engine != imagebuilder.EnginePostgres || p.version != "15" || p.engineImage != "mirror/pg:15.7" || p.builderImage != "mirror/builder:2" ||
		p.storageClass != "fast" || p.size.Cmp(size) != 0 || p.node != "node-h" || *p.deadline != 60 {
		t.Errorf("plan %+v", p)
	}
	job := r.buildJob(di, p)
	ps := job.Spec.Template.Spec
	if ps.NodeSelector[wellknown.TopologyKey] != "node-h" || ps.NodeSelector["dataimage.io/cloning-node"] != "true" {
		t.Errorf("nodeSelector %v", ps.NodeSelector)
	}
	if r.cfg.BuildNodeSelector[wellknown.TopologyKey] != "" {
		t.Error("the configuration's node selector was changed")
	}
	if v := ps.Volumes[2]; v.HostPath == nil || v.HostPath.Path != "/srv/backups" {
		t.Errorf("backups volume %+v", v)
	}
	if got := ps.Containers[0].Resources.Limits[corev1.ResourceCPU]; got.Cmp(resource.MustParse("2")) != 0 {
		t.Errorf("resources %+v", ps.Containers[0].Resources)
	}

	// Every problem at once, the name's included.
	di.Name = strings.Repeat("n", maxImageName+1)
	di.Spec.Version = "9"
	_, err = r.makePlan(di)
	if !errors.Is(err, imagebuilder.ErrInvalidDefinition) {
		t.Fatalf("makePlan: %v", err)
	}
	for _, want := range []string{"version:", "metadata.name: must be at most 57 characters"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
}

func TestSetupOptions(t *testing.T) {
	cfg := testConfig(t)
	bad := *cfg
	bad.Engines = nil
	for _, opts := range []Options{{Logs: &cannedLogs{}}, {Config: cfg}, {Config: &bad, Logs: &cannedLogs{}}} {
		if err := Setup(nil, opts); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("Setup(%+v) = %v, want ErrInvalidOptions", opts, err)
		}
	}
}
