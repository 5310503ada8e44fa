//go:build unix

package main

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeSignals: the first SIGINT lets a running stream go on (the grace period is a
// minute), the second ends the command at once.
func TestServeSignals(t *testing.T) {
	dir := tinyModel(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	type result struct {
		errOut string
		code   int
	}
	done := make(chan result, 1)
	go func() {
		_, errOut, code := qt(t, "", "serve", "--model", dir, "--addr", addr, "--shutdown-timeout", "1m", "--quiet")
		done <- result{errOut, code}
	}()
	url := "http://" + addr
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if res, err := http.Get(url + "/health"); err == nil {
			res.Body.Close()
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("the server did not start")
		}
	}
	res, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true,"max_tokens":2000,"temperature":1,"messages":[{"role":"user","content":"Tell me a long story"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body := bufio.NewReader(res.Body)
	if _, err := body.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("the first signal ended the command (%d): %s", r.code, r.errOut)
	default:
	}
	if _, err := body.ReadString('\n'); err != nil {
		t.Fatalf("the stream stopped after the first signal: %v", err)
	}
	start := time.Now()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.code == 0 || !strings.Contains(r.errOut, "shutting down") || !strings.Contains(r.errOut, "stopped at once by a second signal") {
			t.Fatalf("exit %d, stderr %q", r.code, r.errOut)
		}
		t.Logf("ended %s after the second signal (exit %d)", time.Since(start).Round(time.Millisecond), r.code)
	case <-time.After(3 * time.Second):
		t.Fatal("the second signal did not end the command")
	}
}
