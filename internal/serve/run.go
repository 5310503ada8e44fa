package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Run serves on ln and runs the generations on the calling goroutine (which must own the
// model and, on a GPU, the device) until stop ends (the caller ties it to SIGINT and
// SIGTERM); then it stops accepting and lets running requests finish for up to grace. What
// is still running then is ended: a stream gets its last chunk, an error event and [DONE], a
// waiting request 503. If kill ends (a second signal), Run closes everything at once.
func (s *Server) Run(stop, kill context.Context, ln net.Listener, grace time.Duration, logw io.Writer) error {
	base, cancelRequests := context.WithCancel(context.Background())
	defer cancelRequests()
	var conns activeConns
	hs := &http.Server{Handler: s.Handler(), BaseContext: func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: s.opts.ReadTimeout, IdleTimeout: s.opts.IdleTimeout,
		ConnState: conns.track}
	work, stopWork := context.WithCancel(context.Background())
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	result := make(chan error, 1)
	go func() {
		defer stopWork()
		var err error
		select {
		case <-stop.Done():
			fmt.Fprintf(logw, "shutting down: running requests may finish within %s (a second signal stops at once)\n", grace)
		case <-kill.Done():
		case err = <-serveErr:
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
		}
		sctx, cancel := context.WithTimeout(kill, grace)
		defer cancel()
		if hs.Shutdown(sctx) == nil {
			result <- err
			return
		}
		s.stopping.Store(true)
		cancelRequests()
		if kill.Err() == nil {
			fmt.Fprintf(logw, "requests still running after %s: ending them\n", grace)
			// the handlers send their last chunks (or a 503), the server writes them out, and
			// then what is left is closed
			end := time.Now().Add(cutShortTimeout)
			for (s.inflight.Load() > 0 || conns.count() > 0) && kill.Err() == nil && time.Now().Before(end) {
				time.Sleep(10 * time.Millisecond)
			}
		} else {
			fmt.Fprintln(logw, "stopping now")
			err = errors.Join(err, errors.New("serve: stopped at once by a second signal; running requests were cut"))
		}
		if cerr := hs.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("serve: closing the listener: %w", cerr)
		}
		result <- err
	}()
	s.Work(work)
	return <-result
}

// activeConns counts the connections with a request being answered (http.StateActive): a
// connection stays active after its handler returns until the server has written the whole
// response out.
type activeConns struct {
	mu     sync.Mutex
	active map[net.Conn]bool
}

func (a *activeConns) track(c net.Conn, st http.ConnState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.active == nil {
		a.active = map[net.Conn]bool{}
	}
	if st == http.StateActive {
		a.active[c] = true
	} else {
		delete(a.active, c)
	}
}

func (a *activeConns) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.active)
}
