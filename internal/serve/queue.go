package serve

// The admission slots and the queue of generations that Work runs one at a time.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/qwen-tune/qwen-tune/model"
)

type job struct {
	ctx    context.Context
	prompt []int
	samp   Sampling
	out    chan model.TokenLogprob // the ids as they are generated; closed when the generation ends
	res    jobResult
}

type jobResult struct {
	ids    []int
	reason model.StopReason
	err    error
}

// Work runs queued generations one at a time until ctx ends; call it from the goroutine
// that owns the model (on a GPU, the one that opened the device).
func (s *Server) Work(ctx context.Context) {
	for {
		if ctx.Err() != nil {
			for j := s.take(); j != nil; j = s.take() { // whoever still waits gets a cancelled reply
				j.res = jobResult{reason: model.StopCancelled}
				close(j.out)
			}
			return
		}
		if j := s.take(); j != nil {
			s.run(j)
			continue
		}
		select {
		case <-ctx.Done():
		case <-s.wake:
		}
	}
}

func (s *Server) run(j *job) {
	defer close(j.out)
	if j.ctx.Err() != nil { // the client left while it waited
		j.res = jobResult{reason: model.StopCancelled}
		return
	}
	s.busy.Store(true)
	defer s.busy.Store(false)
	ids, reason, err := s.eng.Generate(j.ctx, j.prompt, j.samp, func(t model.TokenLogprob) error {
		select {
		case j.out <- t:
		case <-j.ctx.Done():
		}
		return nil
	})
	j.res = jobResult{ids: ids, reason: reason, err: err}
	s.served.Add(1)
}

// submit queues a generation (its request holds a slot, so the queue is bounded).
func (s *Server) submit(j *job) {
	s.mu.Lock()
	s.waiting = append(s.waiting, j)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take removes the oldest waiting generation; nil when none waits.
func (s *Server) take() *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiting) == 0 {
		return nil
	}
	j := s.waiting[0]
	s.waiting = slices.Delete(s.waiting, 0, 1)
	return j
}

// withdraw removes j if it has not started; false when Work already took it.
func (s *Server) withdraw(j *job) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.Index(s.waiting, j)
	if i < 0 {
		return false
	}
	s.waiting = slices.Delete(s.waiting, i, i+1)
	return true
}

// queued is how many generations wait.
func (s *Server) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiting)
}

// admit takes a request's slot before anything of its body is read; false (after answering
// 429) when all are taken. The slot is given back by release, when the request is done.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	select {
	case s.slots <- struct{}{}:
		return func() { <-s.slots }, true
	default:
	}
	// The answer goes out at once, before the body; then the body is drained (never held,
	// bounded by MaxBody and ReadTimeout), so that closing the connection does not reset it
	// before the client has read the answer.
	rc := http.NewResponseController(w)
	duplex := rc.EnableFullDuplex() == nil
	w.Header().Set("Connection", "close")
	w.Header().Set("Retry-After", "1")
	s.writeError(w, http.StatusTooManyRequests, "rate_limit_error", "", "queue_full", fmt.Sprintf("the server is busy: %d requests are already admitted; retry later", cap(s.slots)))
	if err := rc.Flush(); err != nil || !duplex {
		return nil, false
	}
	if err := rc.SetReadDeadline(time.Now().Add(s.opts.ReadTimeout)); err != nil {
		return nil, false
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(r.Body, s.opts.MaxBody)); err != nil {
		s.logf("draining a refused request's body: %v", err)
	}
	return nil, false
}
