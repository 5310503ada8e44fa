package serve

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stalledBody opens a connection that sends a request's headers and part of its body, then
// waits.
func stalledBody(t *testing.T, url string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\":"); err != nil {
		t.Fatal(err)
	}
	return conn
}

// settle bounds waitFor: the conditions are polled every 10 ms, so only a machine under heavy
// load comes near it.
const settle = 15 * time.Second

// waitFor polls cond for up to settle.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > settle {
			t.Fatalf("%s: not within %s", what, settle)
		}
	}
}

// TestAdmissionBeforeTheBody: a request takes its slot before its body is read, so slow
// senders count against --queue and the next request is refused at once.
func TestAdmissionBeforeTheBody(t *testing.T) {
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{Queue: 2})
	a, b := stalledBody(t, url), stalledBody(t, url)
	waitFor(t, "two slow bodies admitted", func() bool { return health(t, url)["admitted"] == 2.0 })
	code, body := post(t, url+"/v1/chat/completions", "", `{"messages":[{"role":"user","content":"hi"}]}`)
	if code != 429 || !strings.Contains(string(body), "queue_full") {
		t.Fatalf("a third request while two bodies are being read: %d %s", code, body)
	}
	// a refused slow sender is answered at once, its body left unread
	c := stalledBody(t, url)
	if err := c.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || res.StatusCode != 429 {
		t.Fatalf("a refused slow sender: %v %v", res, err)
	}
	res.Body.Close()
	a.Close()
	b.Close()
	waitFor(t, "slots freed by closed connections", func() bool { return health(t, url)["admitted"] == 0.0 })
	if code, body := post(t, url+"/v1/chat/completions", "", `{"messages":[{"role":"user","content":"hi"}]}`); code != 200 {
		t.Fatalf("after the slow senders left: %d %s", code, body)
	}
}

// TestReadTimeout: a body that stops coming is answered 408 after ReadTimeout and its slot
// freed.
func TestReadTimeout(t *testing.T) {
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{Queue: 1, ReadTimeout: 200 * time.Millisecond})
	conn := stalledBody(t, url)
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("stalled body: %d %s %v", res.StatusCode, b, err)
	}
	if code, body := post(t, url+"/v1/chat/completions", "", `{"messages":[{"role":"user","content":"hi"}]}`); code != 200 {
		t.Fatalf("after the timeout: %d %s", code, body)
	}
}

// TestAbandonedRequestsFreeTheirSlots: requests that wait behind a long generation and are
// abandoned give their slots back at once, so a stream of them never fills the queue.
func TestAbandonedRequestsFreeTheirSlots(t *testing.T) {
	eng := newScripted(t)
	eng.started = make(chan struct{}, 1)
	_, url := startServer(t, eng, Options{Queue: 2})
	slow, stopSlow := context.WithCancel(context.Background())
	defer stopSlow()
	go func() {
		req, err := http.NewRequestWithContext(slow, "POST", url+"/v1/chat/completions", strings.NewReader(`{"messages":[{"role":"user","content":"slow"}]}`))
		if err != nil {
			return
		}
		if res, err := http.DefaultClient.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	<-eng.started
	for i := range 40 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() {
			req, err := http.NewRequestWithContext(ctx, "POST", url+"/v1/chat/completions", strings.NewReader(`{"messages":[{"role":"user","content":"hi"}]}`))
			if err != nil {
				done <- -1
				return
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- 0
				return
			}
			res.Body.Close()
			done <- res.StatusCode
		}()
		waitFor(t, fmt.Sprintf("request %d queued", i), func() bool { return health(t, url)["queued"] == 1.0 })
		cancel()
		if code := <-done; code != 0 {
			t.Fatalf("request %d: status %d, want it abandoned", i, code)
		}
		waitFor(t, fmt.Sprintf("request %d's slot freed", i), func() bool { return health(t, url)["queued"] == 0.0 })
	}
}

// runServer runs s as the command does, on loopback; stop and kill are its two signals.
func runServer(t *testing.T, s *Server, grace time.Duration) (url string, stop, kill context.CancelFunc, ran chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stopCtx, stop := context.WithCancel(context.Background())
	killCtx, kill := context.WithCancel(context.Background())
	ran = make(chan error, 1)
	go func() {
		runtime.LockOSThread() // Run owns the worker, as the CUDA build needs
		ran <- s.Run(stopCtx, killCtx, ln, grace, io.Discard)
	}()
	t.Cleanup(func() { kill(); stop() })
	return "http://" + ln.Addr().String(), stop, kill, ran
}

// runReturned fails unless Run returns nil within limit.
func runReturned(t *testing.T, ran chan error, limit time.Duration) {
	t.Helper()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(limit):
		t.Fatal("Run did not return")
	}
}

// TestGracefulShutdown: after the stop signal a running request still finishes, new
// connections are refused, and Run returns.
func TestGracefulShutdown(t *testing.T) {
	eng := newScripted(t)
	eng.started = make(chan struct{}, 1)
	url, stop, _, ran := runServer(t, New(eng, Options{}), 10*time.Second)
	got := make(chan string, 1)
	go func() {
		_, b := post(t, url+"/v1/chat/completions", "", `{"messages":[{"role":"user","content":"slow"}],"max_tokens":30}`)
		got <- string(b)
	}()
	<-eng.started
	stop() // SIGTERM
	select {
	case b := <-got:
		if !strings.Contains(b, `"finish_reason":"length"`) {
			t.Fatalf("the running request ended with %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the running request did not finish")
	}
	runReturned(t, ran, 10*time.Second)
	if _, err := http.Get(url + "/health"); err == nil {
		t.Fatal("the server still accepts connections")
	}
}

// TestShutdownEndsStreamsCleanly: a stream still running when the grace period ends gets a
// finish_reason, an error event and [DONE]; a non-streamed request gets 503.
func TestShutdownEndsStreamsCleanly(t *testing.T) {
	eng := newScripted(t)
	eng.started = make(chan struct{}, 2)
	s := New(eng, Options{})
	url, stop, _, ran := runServer(t, s, 300*time.Millisecond)
	type result struct {
		status int
		body   string
	}
	results := make(chan result, 2)
	for _, stream := range []bool{true, false} {
		go func() {
			res, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(fmt.Sprintf(`{"stream":%v,"messages":[{"role":"user","content":"slow"}]}`, stream)))
			if err != nil {
				results <- result{0, err.Error()}
				return
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				b = append(b, " READ ERROR: "+err.Error()...)
			}
			results <- result{res.StatusCode, string(b)}
		}()
	}
	<-eng.started
	waitFor(t, "both requests admitted", func() bool { return health(t, url)["admitted"] == 2.0 })
	stop()
	for range 2 {
		select {
		case r := <-results:
			if strings.HasPrefix(r.body, "data: ") {
				i := strings.Index(r.body, `"finish_reason":"length"`)
				j := strings.Index(r.body, `data: {"error":`)
				k := strings.Index(r.body, "data: [DONE]")
				if r.status != 200 || i < 0 || j < i || k < j || strings.Contains(r.body, "READ ERROR") {
					t.Fatalf("the stream ended %d %q", r.status, r.body[max(0, len(r.body)-400):])
				}
			} else if r.status != 503 || !strings.Contains(r.body, "shutting down") {
				t.Fatalf("the waiting request ended %d %s", r.status, r.body)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("requests still running 5 s after a 300 ms grace period")
		}
	}
	runReturned(t, ran, 5*time.Second)
}

// TestSecondSignalEndsAtOnce: a second signal does not wait for the grace period.
func TestSecondSignalEndsAtOnce(t *testing.T) {
	eng := newScripted(t)
	eng.started = make(chan struct{}, 1)
	url, stop, kill, ran := runServer(t, New(eng, Options{}), time.Minute)
	ended := make(chan error, 1) // how the stream ended (cut: an error)
	go func() {
		res, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true,"messages":[{"role":"user","content":"slow"}]}`))
		if err == nil {
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		ended <- err
	}()
	<-eng.started
	stop()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	kill()
	select {
	case err := <-ran:
		if err == nil || !strings.Contains(err.Error(), "second signal") {
			t.Fatalf("Run returned %v, want the second signal named", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Run took %s after the second signal", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the second signal")
	}
	select {
	case err := <-ended:
		t.Logf("the stream ended: %v", err)
	case <-time.After(time.Second):
		t.Fatal("the stream's connection stayed open after the second signal")
	}
}

// TestCancelledRequestsAreLoggedSo: a client that leaves is logged 499, not 200.
func TestCancelledRequestsAreLoggedSo(t *testing.T) {
	eng := newScripted(t)
	eng.started = make(chan struct{}, 1)
	var mu sync.Mutex
	var lines []string
	_, url := startServer(t, eng, Options{Logf: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	}})
	res, cancel, err := slowStream(http.DefaultClient, url)
	if err != nil {
		t.Fatal(err)
	}
	<-eng.started
	cancel()
	res.Body.Close()
	waitFor(t, "the cancelled request logged", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l, "/v1/chat/completions 499") {
				return true
			}
		}
		return false
	})
}

// TestConcurrentBigBodiesAreBounded: 100 clients send 1 MiB bodies at once; only the
// admitted ones are read, so the resident set grows by a few bodies, not by a hundred.
func TestConcurrentBigBodiesAreBounded(t *testing.T) {
	if rssBytes() == 0 || raceEnabled {
		t.Skip("no resident set to measure: no /proc/self/status, or the race detector's")
	}
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{Queue: 4})
	filler := strings.Repeat("x", 1<<20-100)
	body := []byte(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"user":"` + filler + `"}`)
	debug.FreeOSMemory()
	base := rssBytes()
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		for {
			peak.Store(max(peak.Load(), rssBytes()))
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	statuses := make(chan int, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := http.Post(url+"/v1/chat/completions", "application/json", bytes.NewReader(body))
			if err != nil {
				statuses <- -1
				return
			}
			defer res.Body.Close()
			if _, err := io.Copy(io.Discard, res.Body); err != nil {
				statuses <- -1
				return
			}
			statuses <- res.StatusCode
		}()
	}
	wg.Wait()
	close(done)
	close(statuses)
	counts := map[int]int{}
	for c := range statuses {
		counts[c]++
	}
	grew := peak.Load() - base
	t.Logf("statuses %v; RSS %.1f MB, peak %.1f MB higher", counts, float64(base)/(1<<20), float64(grew)/(1<<20))
	if counts[200]+counts[429] != 100 || counts[200] == 0 {
		t.Fatalf("statuses %v: want 200 or 429 for all", counts)
	}
	if grew > 48<<20 {
		t.Fatalf("the resident set grew by %d MB for 100 bodies of 1 MiB with 4 slots", grew>>20)
	}
}
