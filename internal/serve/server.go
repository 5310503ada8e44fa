package serve

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

//go:embed web
var webFS embed.FS

// Limits of a Server and the defaults of its Options.
const (
	// DefaultMaxBody bounds a request body (1 MiB): room for a conversation far longer than
	// a model's context, small enough that no body strains the server's memory.
	DefaultMaxBody = 1 << 20
	// DefaultQueue is how many requests are admitted at once (one generating, the others
	// sending their bodies or waiting).
	DefaultQueue = 16
	// DefaultReadTimeout bounds how long a client may take to send its request body.
	DefaultReadTimeout = 30 * time.Second
	// DefaultIdleTimeout is how long a kept-alive connection may stay idle before it is closed.
	DefaultIdleTimeout = 2 * time.Minute
	// cutShortTimeout is how long, after the shutdown's grace period, requests are given to
	// send their last chunk before their connections are closed.
	cutShortTimeout = 5 * time.Second
	// DefaultMaxTokens is a reply's length when a request gives none (max_new_tokens of
	// Qwen-7B's generation_config.json).
	DefaultMaxTokens = 512
	// maxStops is the most stop strings a request may give (OpenAI's limit).
	maxStops = 4
	// maxPenalty bounds presence_penalty and frequency_penalty (OpenAI's range, +-2).
	maxPenalty = 2
	// maxTopLogprobs is the most alternatives a token's log-probabilities may list.
	maxTopLogprobs = 20
	// streamBuffer is how many generated ids may wait for a handler to decode and send them
	// before generation blocks.
	streamBuffer = 256
	// readHeaderTimeout bounds how long a client may take to send its request headers.
	readHeaderTimeout = 10 * time.Second
	// maxTemperature is the highest temperature a request may ask for (OpenAI's bound).
	maxTemperature = 2
	// idBytes are the random bytes of a response or tool-call id (hex-encoded after its prefix).
	idBytes = 12
)

// Options configure a Server.
type Options struct {
	// APIKey, when set, is required as "Authorization: Bearer KEY" on /v1/ routes.
	APIKey string
	// MaxBody bounds a request body in bytes (default DefaultMaxBody).
	MaxBody int64
	// Queue is how many requests are admitted at once, counting the one generating and
	// those still sending their bodies (default DefaultQueue); more get 429 before their
	// bodies are read, so at most Queue bodies are held in memory.
	Queue int
	// ReadTimeout bounds the time to send a request body (default DefaultReadTimeout); a
	// slower client gets 408 and gives its slot back.
	ReadTimeout time.Duration
	// IdleTimeout closes kept-alive connections idle that long (default DefaultIdleTimeout;
	// Run applies it).
	IdleTimeout time.Duration
	// MaxTokens is the default reply length when a request gives none (default
	// DefaultMaxTokens).
	MaxTokens int
	// Aliases are other names requests may give for the model (its ID always works); any
	// other name is answered 404 model_not_found.
	Aliases []string
	// Logf, when set, receives one line per request.
	Logf func(format string, args ...any)
}

// Server answers the API and serves the page; Work runs the generations.
type Server struct {
	eng      Engine
	opts     Options
	slots    chan struct{} // one per admitted request
	mu       sync.Mutex
	waiting  []*job        // generations not yet started, oldest first
	wake     chan struct{} // tells Work a job was queued
	busy     atomic.Bool
	served   atomic.Int64
	inflight atomic.Int64 // requests being handled
	stopping atomic.Bool  // the shutdown's grace period is over: requests are being ended
	created  int64
	mux      *http.ServeMux
}

// New makes a server for eng.
func New(eng Engine, opts Options) *Server {
	if opts.MaxBody <= 0 {
		opts.MaxBody = DefaultMaxBody
	}
	if opts.Queue <= 0 {
		opts.Queue = DefaultQueue
	}
	if opts.MaxTokens <= 0 {
		opts.MaxTokens = DefaultMaxTokens
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	s := &Server{eng: eng, opts: opts, slots: make(chan struct{}, opts.Queue), wake: make(chan struct{}, 1), created: time.Now().Unix(), mux: http.NewServeMux()}
	static, err := fs.Sub(webFS, "web")
	if err != nil {
		panic(fmt.Sprintf("serve: the embedded page: %v", err)) // "web" is a valid name, embedded above
	}
	s.mux.Handle("/", http.FileServerFS(static))
	s.mux.HandleFunc("GET /health", s.health)
	s.mux.HandleFunc("GET /v1/models", s.auth(s.models))
	s.mux.HandleFunc("GET /v1/models/{id}", s.auth(s.model))
	s.mux.HandleFunc("POST /v1/chat/completions", s.auth(s.chat))
	s.mux.HandleFunc("POST /v1/completions", s.auth(s.completions))
	for path, allow := range map[string]string{"/v1/models": "GET", "/v1/models/{id}": "GET", "/v1/chat/completions": "POST", "/v1/completions": "POST", "/health": "GET"} {
		s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			s.writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "", "method_not_allowed", fmt.Sprintf("%s %s is not supported: use %s", r.Method, r.URL.Path, allow))
		})
	}
	s.mux.HandleFunc("/v1/", s.auth(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, http.StatusNotFound, "invalid_request_error", "", "unknown_url", fmt.Sprintf("no route %s %s (this server has /v1/chat/completions, /v1/completions and /v1/models)", r.Method, r.URL.Path))
	}))
	return s
}

// logf logs a line when the server has a log.
func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// Handler is the HTTP handler. Its log line gives 499 for a request whose client left
// before the answer was complete, as nginx does.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		s.mux.ServeHTTP(rec, r)
		status := fmt.Sprint(rec.status)
		switch {
		case r.Context().Err() != nil && s.stopping.Load():
			status += " (ended by the shutdown)"
		case r.Context().Err() != nil:
			status = "499 (the client left)"
		}
		s.logf("%s %s %s %.3fs", r.Method, r.URL.Path, status, time.Since(start).Seconds())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (read deadlines).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.opts.APIKey != "" {
			scheme, got, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
			if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.opts.APIKey)) != 1 {
				w.Header().Set("WWW-Authenticate", "Bearer")
				s.writeError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key", "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key the server was started with (--api-key)")
				return
			}
		}
		h(w, r)
	}
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "model": s.eng.ModelID(), "busy": s.busy.Load(), "admitted": len(s.slots), "queued": s.queued(), "served": s.served.Load()})
}

func (s *Server) models(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []map[string]any{s.modelObject(s.eng.ModelID())}})
}

func (s *Server) modelObject(id string) map[string]any {
	return map[string]any{"id": id, "object": "model", "created": s.created, "owned_by": "qwen-tune"}
}

// model answers GET /v1/models/{id} for the model's ID and aliases.
func (s *Server) model(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.checkModel(id); err != nil {
		s.requestFailed(w, err)
		return
	}
	s.writeJSON(w, http.StatusOK, s.modelObject(id))
}

// checkModel accepts the model's ID, its aliases, and no name at all.
func (s *Server) checkModel(name string) error {
	if name == "" || name == s.eng.ModelID() || slices.Contains(s.opts.Aliases, name) {
		return nil
	}
	names := strings.Join(append([]string{s.eng.ModelID()}, s.opts.Aliases...), ", ")
	return &requestError{status: http.StatusNotFound, param: "model", code: "model_not_found", msg: fmt.Sprintf("the model %q does not exist: this server serves %s", name, names)}
}

// writeJSON answers with v; a failed write (the client is gone) is logged.
func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		s.logf("writing a %d response: %v", status, err)
	}
}

func (s *Server) writeError(w http.ResponseWriter, status int, typ, param, code, msg string) {
	e := APIError{Message: msg, Type: typ}
	if param != "" {
		e.Param = &param
	}
	if code != "" {
		e.Code = &code
	}
	s.writeJSON(w, status, map[string]any{"error": e})
}

func (s *Server) requestFailed(w http.ResponseWriter, err error) {
	var re *requestError
	if errors.As(err, &re) {
		status := re.status
		if status == 0 {
			status = http.StatusBadRequest
		}
		s.writeError(w, status, "invalid_request_error", re.param, re.code, re.msg)
		return
	}
	s.writeError(w, http.StatusInternalServerError, "server_error", "", "", err.Error())
}

func newID(prefix string) string {
	b := make([]byte, idBytes)
	rand.Read(b) // crypto/rand.Read never returns an error: it crashes the program instead
	return prefix + hex.EncodeToString(b)
}

// reply is one generation seen from its handler: text as it is decoded and cut at stop
// strings.
type reply struct {
	s      *Server
	j      *job
	cancel context.CancelFunc
	dec    *tokenizer.StreamDecoder
	stop   stopMatcher
	text   strings.Builder
	toks   []model.TokenLogprob
}

// start queues the generation of an admitted request.
func (s *Server) start(r *http.Request, prompt []int, sp Sampling, stops []string) *reply {
	ctx, cancel := context.WithCancel(r.Context())
	j := &job{ctx: ctx, prompt: prompt, samp: sp, out: make(chan model.TokenLogprob, streamBuffer)}
	s.submit(j)
	return &reply{s: s, j: j, cancel: cancel, dec: s.eng.Tokenizer().NewStreamDecoder(), stop: stopMatcher{stops: stops}}
}

// each calls f with every piece of text that may be shown, in order, with the tokens
// generated since the last call (their log-probabilities when asked for), and returns how
// the reply ended: "stop", "length", or "cancelled" (the client left), with the ids
// generated. The tokens of the whole reply are in rp.toks.
func (rp *reply) each(f func(text string, toks []model.TokenLogprob) error) (string, []int, error) {
	defer rp.cancel()
	var ferr error
	pending := 0 // rp.toks[len(rp.toks)-pending:] have not been passed to f
	emit := func(t string) {
		if t == "" || ferr != nil {
			return
		}
		rp.text.WriteString(t)
		if ferr = f(t, rp.toks[len(rp.toks)-pending:]); ferr != nil {
			rp.cancel() // the client is gone: stop generating
		}
		pending = 0
	}
	for {
		var tl model.TokenLogprob
		var ok bool
		select {
		case tl, ok = <-rp.j.out:
		case <-rp.j.ctx.Done():
			if rp.s.withdraw(rp.j) { // it never started: nothing to wait for
				return "cancelled", nil, context.Canceled
			}
			tl, ok = <-rp.j.out // it runs, and ends at its next token
		}
		if !ok {
			break
		}
		if rp.stop.hit {
			continue
		}
		id := tl.ID
		rp.toks = append(rp.toks, tl)
		pending++
		piece, err := rp.dec.Add(id)
		if err != nil {
			ferr = err
			rp.cancel()
			continue
		}
		emit(rp.stop.push(piece))
		if rp.stop.hit {
			rp.cancel() // a stop string: no more tokens are needed
		}
	}
	res := rp.j.res
	if !rp.stop.hit {
		emit(rp.stop.push(rp.dec.Flush()))
		emit(rp.stop.flush())
	}
	if pending > 0 && ferr == nil {
		ferr = f("", rp.toks[len(rp.toks)-pending:])
	}
	switch {
	case res.err != nil:
		return "", res.ids, res.err
	case ferr != nil:
		return "cancelled", res.ids, ferr
	case rp.stop.hit || res.reason == model.StopToken:
		return "stop", res.ids, nil
	case res.reason == model.StopCancelled:
		return "cancelled", res.ids, context.Canceled
	}
	return "length", res.ids, nil
}

// sse writes server-sent events. The first failed write (the client is gone) is logged and
// ends the stream: nothing more is written.
type sse struct {
	w    http.ResponseWriter
	logf func(format string, args ...any)
	err  error
}

func (s *Server) startSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, logf: s.logf}
}

// emit sends v as one event.
func (e *sse) emit(v any) {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		e.fail(fmt.Errorf("encoding an event: %w", err))
		return
	}
	e.write("data: " + strings.TrimSuffix(b.String(), "\n") + "\n\n")
}

// send is emit for callers that stop on a failure: it returns the stream's error.
func (e *sse) send(v any) error {
	e.emit(v)
	return e.err
}

// done ends the stream as OpenAI's does.
func (e *sse) done() { e.write("data: [DONE]\n\n") }

func (e *sse) write(event string) {
	if e.err != nil {
		return
	}
	if _, err := io.WriteString(e.w, event); err != nil {
		e.fail(err)
		return
	}
	if f, ok := e.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (e *sse) fail(err error) {
	e.err = err
	e.logf("streaming a reply: %v", err)
}

func strPtr(s string) *string { return &s }

func usage(prompt, completion int) *Usage {
	return &Usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
}
