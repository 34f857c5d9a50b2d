package dataimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// LogReader reads the end of a container's log. The controller reads a running build's
// progress through it: the builder writes one JSON build event per line on stdout.
//
// In a cluster it is NewPodLogReader (the pods/log subresource, served by the kubelet). The
// controller's envtest tests run without a kubelet, where pods/log cannot answer, and give the
// controller a LogReader that returns canned log lines instead.
type LogReader interface {
	// TailLog returns at most the last lines lines (and at most maxLogBytes bytes) of the log
	// of container in the pod namespace/pod.
	TailLog(ctx context.Context, namespace, pod, container string, lines int64) ([]byte, error)
}

// maxLogBytes bounds one log read: a build event line is short, an engine log line can be long.
const maxLogBytes = 64 << 10

// tailLines is how many lines of a build's log are read each time: enough to find the last
// build event behind engine log lines, and to give a failure the engine's log tail.
const tailLines = 40

// NewPodLogReader returns a LogReader that reads pods/log through the API server.
func NewPodLogReader(cfg *rest.Config) (LogReader, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("controller: pod log client: %w", err)
	}
	return &podLogReader{cs: cs}, nil
}

type podLogReader struct{ cs kubernetes.Interface }

func (p *podLogReader) TailLog(ctx context.Context, namespace, pod, container string, lines int64) ([]byte, error) {
	b, err := p.cs.CoreV1().Pods(namespace).GetLogs(pod, &corev1.PodLogOptions{
		Container:  container,
		TailLines:  ptr.To(lines),
		LimitBytes: ptr.To[int64](maxLogBytes),
	}).DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w %s/%s container %s: %w", ErrPodLog, namespace, pod, container, err)
	}
	return b, nil
}

// buildLog is what the tail of a build's log says.
type buildLog struct {
	// last is the last build event, nil when the tail has none.
	last *wire.Event
	// engine holds the engine's log lines (events' Log) and the lines that are not events
	// (the builder's own messages on stderr), oldest first.
	engine []string
	// unreadable is why the last build event this controller cannot read (another major
	// version of the builder's wire format) was not read; nil when there was none.
	unreadable error
}

// parseBuildLog reads the tail of a build container's log by the rules of the builder's wire
// format (wire.DecodeEvent): a line that is not a build event (a log line of the builder on
// stderr, a cut first line) is kept as log; an event of a kind this controller does not know
// (a newer builder's) is skipped; an event of a major version it cannot read is skipped and
// noted in unreadable.
func parseBuildLog(b []byte) buildLog {
	var l buildLog
	for line := range bytes.Lines(b) {
		line = bytes.TrimRight(line, "\r\n")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		ev, err := wire.DecodeEvent(line)
		switch {
		case err == nil:
			l.last = &ev
			if ev.Log != "" {
				l.engine = append(l.engine, ev.Log)
			}
		case errors.Is(err, wire.ErrUnknownKind):
		case errors.Is(err, wire.ErrUnsupportedVersion):
			l.unreadable = err
		default:
			l.engine = append(l.engine, string(line))
		}
	}
	return l
}

// result is how a finished build ended.
type result struct {
	ok      bool
	outcome *wire.Outcome // nil when the pod wrote none (killed, deadline, crash)
	step    string        // the step that failed
	message string        // what failed
	logTail string        // the engine's log tail
	// finished is when the build container ended (zero when not known).
	finished time.Time
}

// buildPod picks the Job's pod to look at: the one whose build container has ended, else
// the newest (a Job with backoffLimit 0 has one, but a deleted pod may be replaced).
func buildPod(pods []corev1.Pod) *corev1.Pod {
	var pick *corev1.Pod
	for i := range pods {
		p := &pods[i]
		if terminated(p, buildContainerName) != nil {
			return p
		}
		if pick == nil || pick.CreationTimestamp.Before(&p.CreationTimestamp) {
			pick = p
		}
	}
	return pick
}

// terminated returns the terminated state of the named container, or nil.
func terminated(p *corev1.Pod, name string) *corev1.ContainerStateTerminated {
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for i := range list {
			if list[i].Name == name {
				return list[i].State.Terminated
			}
		}
	}
	return nil
}

// containerStarted says whether the named container has run (its log may be read).
func containerStarted(p *corev1.Pod, name string) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == name {
			return s.State.Running != nil || s.State.Terminated != nil
		}
	}
	return false
}

// jobFailure returns the Job's Failed condition, or nil.
func jobFailure(job *batchv1.Job) *batchv1.JobCondition {
	for i := range job.Status.Conditions {
		c := &job.Status.Conditions[i]
		if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
			return c
		}
	}
	return nil
}

// buildResult says how the build ended, or nil while it runs. pod may be nil; step is the last
// step the progress showed, engineLog the log lines read from the pod's log.
func buildResult(job *batchv1.Job, pod *corev1.Pod, step string, engineLog []string) *result {
	if pod != nil {
		if t := terminated(pod, initContainerName); t != nil && t.ExitCode != 0 {
			return &result{step: initContainerName, finished: t.FinishedAt.Time,
				message: fmt.Sprintf("init container %s (image %s) exited with code %d (%s): %s",
					initContainerName, containerImage(pod, initContainerName), t.ExitCode, t.Reason, strings.TrimSpace(t.Message))}
		}
		if t := terminated(pod, buildContainerName); t != nil {
			return containerResult(t, step, engineLog)
		}
	}
	if c := jobFailure(job); c != nil {
		if step == "" {
			step = "build"
		}
		return &result{step: step, logTail: strings.Join(engineLog, "\n"),
			message: fmt.Sprintf("the build Job failed (%s): %s", c.Reason, c.Message)}
	}
	return nil
}

// containerResult reads the build container's termination message (wire.Outcome).
func containerResult(t *corev1.ContainerStateTerminated, step string, engineLog []string) *result {
	out, err := wire.ParseOutcome([]byte(t.Message))
	if err == nil {
		r := &result{ok: out.OK && t.ExitCode == 0, outcome: out, finished: t.FinishedAt.Time}
		if !r.ok {
			r.step, r.message, r.logTail = out.Step, out.Message, out.LogTail
			if out.OK {
				r.step, r.message = "build", fmt.Sprintf("the builder reported success but exited with code %d", t.ExitCode)
			}
			if r.logTail == "" {
				r.logTail = strings.Join(engineLog, "\n")
			}
		}
		return r
	}
	if step == "" {
		step = "build"
	}
	msg := fmt.Sprintf("the build container exited with code %d (%s) without a result", t.ExitCode, t.Reason)
	if t.Message != "" {
		msg += fmt.Sprintf(" (termination message: %v)", err)
	}
	return &result{step: step, message: msg, logTail: strings.Join(engineLog, "\n"), finished: t.FinishedAt.Time}
}

func containerImage(p *corev1.Pod, name string) string {
	all := slices.Concat(p.Spec.InitContainers, p.Spec.Containers)
	for _, c := range all {
		if c.Name == name {
			return c.Image
		}
	}
	return ""
}

// waitingMessage says why a pod that has not ended is not running yet, or "".
func waitingMessage(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return fmt.Sprintf("pod %s not scheduled (%s): %s", p.Name, c.Reason, c.Message)
		}
	}
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, s := range list {
			if w := s.State.Waiting; w != nil && w.Reason != "" && w.Reason != "PodInitializing" && w.Reason != "ContainerCreating" {
				return fmt.Sprintf("pod %s container %s waiting (%s): %s", p.Name, s.Name, w.Reason, w.Message)
			}
		}
	}
	return ""
}
