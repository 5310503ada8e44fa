package serve

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rssBytes is the process's resident set (Linux; 0 elsewhere).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// openFDs counts the process's open file descriptors (Linux; -1 elsewhere).
func openFDs() int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(es)
}

// soakKinds are the requests of the soak test, each with the statuses it may get (429: the
// queue was full when it arrived, which any request may meet).
var soakKinds = []struct {
	name string
	ok   []int
}{
	{"chat", []int{200}},
	{"chat stream", []int{200}},
	{"json schema stream", []int{200}},
	{"tool call required", []int{200}},
	{"malformed", []int{400}},
	// a megabyte may take longer than the soak's read timeout to arrive on a loaded machine
	{"big body (1 MiB)", []int{400, 408}},
	{"too big body", []int{413, 408}},
	{"unknown model", []int{404}},
	{"cancelled stream", []int{0}}, // 0: abandoned by the client
	{"slow body", []int{408}},
}

// soakOne sends request i and returns its kind and status, or an error when the answer is
// wrong.
func soakOne(client *http.Client, url string, i int) (int, int, error) {
	kind := i % len(soakKinds)
	msg := func(content string) string {
		return fmt.Sprintf(`{"model":"scripted","messages":[{"role":"user","content":%q}],"max_tokens":24`, content)
	}
	var body string
	switch soakKinds[kind].name {
	case "chat":
		body = msg(fmt.Sprintf("hello %d", i)) + `}`
	case "chat stream":
		body = msg("stop test") + `,"stream":true,"stop":["END"]}`
	case "json schema stream":
		body = msg("Hello") + `,"max_tokens":200,"stream":true,"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":` + recipeSchema + `}}}`
	case "tool call required":
		body = msg("chat only") + `,"max_tokens":200,"tools":[` + weatherTool + `,` + timeTool + `],"tool_choice":"required"}`
	case "malformed":
		body = []string{`{"messages":[`, `{"messages":"x"}`, `[1]`, `{"messages":[{"role":"user","content":"a"}]}]x`, `{"messages":[{"role":"user","content":"a"}],"top_p":9}`}[i/len(soakKinds)%5]
	case "big body (1 MiB)":
		body = msg(strings.Repeat("word ", (1<<20-200)/5)) + `}`
	case "too big body":
		body = msg(strings.Repeat("x", 1<<20)) + `}`
	case "unknown model":
		body = strings.Replace(msg("hi")+`}`, `"scripted"`, `"gpt-9"`, 1)
	case "cancelled stream":
		res, cancel, err := slowStream(client, url)
		if err != nil {
			return kind, -1, err
		}
		defer cancel()
		defer res.Body.Close()
		if res.StatusCode == 429 {
			return kind, 429, drain(res.Body)
		}
		if _, err := bufio.NewReader(res.Body).ReadString('\n'); err != nil {
			return kind, -1, fmt.Errorf("no first chunk: %v", err)
		}
		return kind, 0, nil // the deferred cancel abandons it
	case "slow body":
		conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			return kind, -1, err
		}
		defer conn.Close()
		if _, err := fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"mess"); err != nil {
			return kind, -1, err
		}
		if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			return kind, -1, err
		}
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return kind, -1, err
		}
		defer res.Body.Close()
		return kind, res.StatusCode, drain(res.Body)
	}
	res, err := client.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		return kind, -1, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return kind, res.StatusCode, err
	}
	if res.StatusCode != 200 {
		var e struct{ Error APIError }
		if json.Unmarshal(b, &e) != nil || e.Error.Message == "" {
			return kind, res.StatusCode, fmt.Errorf("not an error body: %.200s", b)
		}
		return kind, res.StatusCode, nil
	}
	return kind, 200, checkSoakReply(soakKinds[kind].name, b)
}

func drain(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// checkSoakReply checks a 200's body for its kind.
func checkSoakReply(kind string, b []byte) error {
	switch kind {
	case "chat", "tool call required":
		var r ChatResponse
		if err := json.Unmarshal(b, &r); err != nil || len(r.Choices) != 1 || r.Choices[0].Message == nil {
			return fmt.Errorf("%v: %.200s", err, b)
		}
		if kind == "tool call required" && (len(r.Choices[0].Message.ToolCalls) != 1 || !json.Valid([]byte(r.Choices[0].Message.ToolCalls[0].Function.Arguments))) {
			return fmt.Errorf("no valid call: %.300s", b)
		}
		return nil
	}
	if !bytes.HasSuffix(b, []byte("data: [DONE]\n\n")) {
		return fmt.Errorf("the stream did not end with [DONE]: %.200q", b[max(0, len(b)-200):])
	}
	var text strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c ChatResponse
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			return fmt.Errorf("chunk %q: %v", data, err)
		}
		for _, ch := range c.Choices {
			if ch.Delta != nil && ch.Delta.Content != nil {
				text.WriteString(*ch.Delta.Content)
			}
		}
	}
	switch {
	case kind == "chat stream" && text.String() != "alpha beta ":
		return fmt.Errorf("streamed %q", text.String())
	case kind == "json schema stream" && !json.Valid([]byte(text.String())):
		return fmt.Errorf("streamed invalid JSON %q", text.String())
	}
	return nil
}

// TestSoak sends mixed requests (valid, streamed, constrained, malformed, oversized,
// cancelled, slow to send) from 16 clients to a server with 8 slots on loopback: every one
// is answered as its kind must be or refused 429; after it, memory is within 1.5x of its
// value after a warm-up, goroutines and file descriptors are back, and the server answers.
// 200 requests by default (100 with -short); QT_SOAK=2000 (any count) runs that many.
func TestSoak(t *testing.T) {
	n := 200
	if v := os.Getenv("QT_SOAK"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("QT_SOAK=%q: want a request count", v)
		}
	}
	if testing.Short() {
		n = 100
	}
	eng := newScripted(t)
	s := New(eng, Options{Queue: 8, ReadTimeout: 300 * time.Millisecond, IdleTimeout: time.Second})
	url, stop, _, ran := runServer(t, s, 5*time.Second)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	const workers = 16
	run := func(from, to int) (map[string]map[int]int, int64) {
		var mu sync.Mutex
		counts := map[string]map[int]int{}
		var next atomic.Int64
		next.Store(int64(from))
		var peak atomic.Int64
		done := make(chan struct{})
		go func() { // sample the resident set while requests run
			for {
				if r := rssBytes(); r > peak.Load() {
					peak.Store(r)
				}
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < to; i = int(next.Add(1) - 1) {
					kind, status, err := soakOne(client, url, i)
					name := soakKinds[kind].name
					ok := status == 429
					for _, want := range soakKinds[kind].ok {
						ok = ok || status == want
					}
					if err != nil || !ok {
						t.Errorf("request %d (%s): status %d, want %v or 429: %v", i, name, status, soakKinds[kind].ok, err)
					}
					mu.Lock()
					if counts[name] == nil {
						counts[name] = map[int]int{}
					}
					counts[name][status]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(done)
		return counts, peak.Load()
	}
	settle := func() (int64, int, int) {
		client.CloseIdleConnections()
		time.Sleep(1500 * time.Millisecond) // the server's idle connections close after 1 s
		debug.FreeOSMemory()                // what is still resident is live, not garbage the runtime keeps
		return rssBytes(), runtime.NumGoroutine(), openFDs()
	}
	warm := min(100, n)
	run(0, warm)
	rss0, g0, fd0 := settle()
	start := time.Now()
	counts, peak := run(warm, warm+n)
	took := time.Since(start)
	rss1, g1, fd1 := settle()
	t.Logf("%d requests in %s after %d to warm up; statuses by kind %v", n, took.Round(time.Millisecond), warm, counts)
	t.Logf("RSS %.1f MB after the warm-up, %.1f MB peak, %.1f MB after; goroutines %d -> %d; file descriptors %d -> %d",
		float64(rss0)/(1<<20), float64(peak)/(1<<20), float64(rss1)/(1<<20), g0, g1, fd0, fd1)
	if rss0 > 0 && !raceEnabled && float64(rss1) > 1.5*float64(rss0) {
		t.Errorf("RSS grew from %d to %d bytes, over 1.5x", rss0, rss1)
	}
	if g1 > g0+4 {
		t.Errorf("goroutines grew from %d to %d", g0, g1)
	}
	if fd0 >= 0 && fd1 > fd0+4 {
		t.Errorf("file descriptors grew from %d to %d", fd0, fd1)
	}
	for name, c := range counts {
		if len(c) == 1 && c[429] > 0 {
			t.Errorf("every %s request was refused 429: %v", name, c)
		}
	}
	if code, b := post(t, url+"/v1/chat/completions", "", `{"messages":[{"role":"user","content":"still there?"}]}`); code != 200 {
		t.Fatalf("after the soak: %d %s", code, b)
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
}
