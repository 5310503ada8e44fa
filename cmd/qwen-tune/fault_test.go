//go:build unix

package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

// TestMain lets a test run qwen-tune as a process of its own: with QWEN_TUNE_AS_MAIN=1 the
// test binary is the command, and QWEN_TUNE_FILE_LIMIT=N makes every write past N bytes of a
// file fail as on a full disk.
func TestMain(m *testing.M) {
	if os.Getenv("QWEN_TUNE_AS_MAIN") == "1" {
		if n, err := strconv.ParseUint(os.Getenv("QWEN_TUNE_FILE_LIMIT"), 10, 64); err == nil {
			if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
				panic(err)
			}
		}
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// process is qwen-tune running as a child process, its stderr read line by line.
type process struct {
	cmd    *exec.Cmd
	lines  chan string
	mu     sync.Mutex
	stderr strings.Builder
}

func start(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(os.Args[0], args...), lines: make(chan string, 1<<16)}
	p.cmd.Env = append(append(os.Environ(), "QWEN_TUNE_AS_MAIN=1"), env...)
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			p.lines <- sc.Text()
		}
	}()
	return p
}

// waitFor reads stderr until a line starting with prefix; false when the process ended.
func (p *process) waitFor(prefix string) bool {
	for line := range p.lines {
		if strings.HasPrefix(line, prefix) {
			return true
		}
	}
	return false
}

// wait waits for the end and returns the exit status and all of stderr.
func (p *process) wait(t *testing.T) (int, string) {
	t.Helper()
	for range p.lines {
	}
	err := p.cmd.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -int(ws.Signal()), p.stderr.String()
	}
	return p.cmd.ProcessState.ExitCode(), p.stderr.String()
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, errA := os.ReadFile(a)
	y, errB := os.ReadFile(b)
	if errA != nil || errB != nil || len(x) == 0 || !bytes.Equal(x, y) {
		t.Errorf("%s differs from %s (%v, %v)", b, a, errA, errB)
	}
}

// faultRun is a 12-step run of the tiny model and its uninterrupted result.
type faultRun struct {
	args     []string // lora's flags but --out
	straight string
}

func newFaultRun(t *testing.T) *faultRun {
	dir, tmp, chats := tinyChats(t)
	f := &faultRun{args: []string{"lora", "--model", dir, "--data", chats, "--steps", "12", "--lora-r", "4", "--lr", "1e-2", "--lora-dropout", "0.1", "--log-every", "1"}, straight: filepath.Join(tmp, "straight")}
	if _, errs, st := qt(t, "", append(f.args, "--out", f.straight, "--save-every", "3")...); st != 0 {
		t.Fatal(errs)
	}
	tfile.NoneLeft(t, f.straight, checkpoints.IsTemp)
	return f
}

// finish checks that out refuses a new run, resumes to the uninterrupted adapter and
// metrics, and holds no temporary file.
func (f *faultRun) finish(t *testing.T, out string, extra ...string) {
	t.Helper()
	args := append(append(f.args, "--out", out), extra...)
	if _, errs, st := qt(t, "", args...); st != 1 || !strings.Contains(errs, "--resume") {
		t.Fatalf("a new run into the killed run's directory: status %d, %s", st, errs)
	}
	if _, errs, st := qt(t, "", append(args, "--resume")...); st != 0 {
		t.Fatalf("--resume: status %d, %s", st, errs)
	}
	sameFile(t, filepath.Join(f.straight, "adapter_model.safetensors"), filepath.Join(out, "adapter_model.safetensors"))
	sameFile(t, filepath.Join(f.straight, "metrics.jsonl"), filepath.Join(out, "metrics.jsonl"))
	tfile.NoneLeft(t, out, checkpoints.IsTemp)
}

// TestKilledRunsResume kills the command (SIGKILL: nothing can be tidied) at several
// points, before and after checkpoints, possibly in the middle of writing one, and on a
// full disk; each directory must resume (or start again) to the uninterrupted result.
func TestKilledRunsResume(t *testing.T) {
	f := newFaultRun(t)
	tmp := t.TempDir()
	for _, k := range []int{1, 3, 5, 8, 11} {
		out := filepath.Join(tmp, "killed-at-"+strconv.Itoa(k))
		p := start(t, nil, append(f.args, "--out", out, "--save-every", "3")...)
		if !p.waitFor("step " + strconv.Itoa(k) + "/12") {
			t.Fatalf("the run ended before step %d: %v", k, p.cmd.Wait())
		}
		p.cmd.Process.Kill()
		if st, errs := p.wait(t); st != -int(syscall.SIGKILL) && st != 0 {
			t.Fatalf("killed at step %d: status %d, %s", k, st, errs)
		}
		f.finish(t, out, "--save-every", "3")
	}
	// A full disk: every file stops at 8 KiB, so the first checkpoint cannot be written; at
	// 1200 bytes metrics.jsonl fills up in the middle of a line (there is no checkpoint).
	for _, c := range []struct{ limit, saveEvery, failing string }{{"8192", "2", "adapter_model.safetensors"}, {"1200", "0", "metrics.jsonl"}} {
		out := filepath.Join(tmp, "full-disk-"+c.limit)
		p := start(t, []string{"QWEN_TUNE_FILE_LIMIT=" + c.limit}, append(f.args, "--out", out, "--save-every", c.saveEvery)...)
		if st, errs := p.wait(t); st != 1 || !strings.Contains(errs, c.failing) || !strings.Contains(errs, "file too large") {
			t.Fatalf("full disk at %s bytes: status %d, %s", c.limit, st, errs)
		}
		tfile.NoneLeft(t, out, checkpoints.IsTemp)
		b, err := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
		if err != nil || len(b) == 0 || b[len(b)-1] != '\n' {
			t.Fatalf("metrics after a full disk (%v): %q", err, b)
		}
		f.finish(t, out, "--save-every", c.saveEvery)
	}
}

// TestSignalsStopWithCheckpoint: SIGINT and SIGTERM stop the run after a step with a
// checkpoint, exit with 130 and 143 and print the command line that continues it, which
// then finishes the run. (The run is long enough not to end before the signal lands;
// TestKilledRunsResume compares resumed runs with an uninterrupted one.)
func TestSignalsStopWithCheckpoint(t *testing.T) {
	dir, tmp, chats := tinyChats(t)
	common := []string{"lora", "--model", dir, "--data", chats, "--steps", "60", "--lora-r", "4", "--log-every", "1"}
	for _, c := range []struct {
		sig    syscall.Signal
		name   string
		status int
	}{{syscall.SIGINT, "SIGINT (Ctrl-C)", 130}, {syscall.SIGTERM, "SIGTERM", 143}} {
		out := filepath.Join(tmp, c.name[:6])
		args := append(common, "--out", out, "--save-every", "0")
		p := start(t, nil, args...)
		if !p.waitFor("step 2/60") {
			t.Fatalf("the run ended before step 2: %v", p.cmd.Wait())
		}
		p.cmd.Process.Signal(c.sig)
		st, errs := p.wait(t)
		_, resume, ok := strings.Cut(errs, "Continue the run with:\n  ")
		resume, _, _ = strings.Cut(resume, "\n")
		if st != c.status || !strings.Contains(errs, "interrupted by "+c.name+" at step ") || !ok {
			t.Fatalf("%s: status %d, %s", c.name, st, errs)
		}
		if want := "qwen-tune " + strings.Join(args, " ") + " --resume"; resume != want {
			t.Errorf("resume command\n%s\nwant\n%s", resume, want)
		}
		cks, _ := filepath.Glob(filepath.Join(out, "checkpoint-*"))
		if len(cks) != 1 {
			t.Errorf("checkpoints after %s: %v", c.name, cks)
		}
		tfile.NoneLeft(t, out, checkpoints.IsTemp)
		if _, errs, st := qt(t, "", strings.Fields(resume)[1:]...); st != 0 {
			t.Fatalf("%s: %s", resume, errs)
		}
		if b, err := os.ReadFile(filepath.Join(out, "metrics.jsonl")); err != nil || bytes.Count(b, []byte("\n")) != 60 {
			t.Errorf("metrics of the resumed run (%v):\n%s", err, b)
		}
		if _, err := os.Stat(filepath.Join(out, "adapter_model.safetensors")); err != nil {
			t.Error(err)
		}
		tfile.NoneLeft(t, out, checkpoints.IsTemp)
	}
}
