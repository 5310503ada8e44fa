package serve

// Reading a request: its body, bounded in size and time, decoded as OpenAI does, and the
// sampling settings both endpoints share.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"
)

// decode reads a JSON body: bounded in size and in time, valid UTF-8, one object of the
// expected types.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	rc := http.NewResponseController(w)
	deadline := rc.SetReadDeadline(time.Now().Add(s.opts.ReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxBody))
	if deadline == nil {
		if derr := rc.SetReadDeadline(time.Time{}); derr != nil {
			s.logf("clearing a request's read deadline: %v", derr)
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		w.Header().Set("Connection", "close")
		s.writeError(w, http.StatusRequestTimeout, "invalid_request_error", "", "request_timeout", fmt.Sprintf("the request body did not arrive within %s", s.opts.ReadTimeout))
		return false
	case errors.As(err, &tooBig):
		s.writeError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "", "request_too_large", fmt.Sprintf("the request body is over %d bytes", s.opts.MaxBody))
		return false
	case err != nil:
		s.writeError(w, http.StatusBadRequest, "invalid_request_error", "", "", "reading the request body: "+err.Error())
		return false
	case !utf8.Valid(body):
		s.writeError(w, http.StatusBadRequest, "invalid_request_error", "", "invalid_encoding", "the request body is not valid UTF-8")
		return false
	}
	if err := decodeBody(body, v); err != nil {
		s.requestFailed(w, err)
		return false
	}
	return true
}

// decodeBody reads one JSON object into v: nothing but whitespace may follow it, and a type
// error names the field and what it must be.
func decodeBody(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) {
			return badRequest("", "the request body is not valid JSON: %v", err)
		}
		// the field's JSON path, without the name of the embedded struct it sits in
		te.Field = strings.ReplaceAll(te.Field, "RequestCommon.", "")
		if te.Field == "" {
			return badRequest("", "the request body must be a JSON object, not %s", jsonValueKind(te.Value))
		}
		if k := te.Type.Kind(); strings.HasPrefix(te.Value, "number") && k >= reflect.Int && k <= reflect.Int64 {
			lo, hi := intRange(te.Type.Bits())
			return badRequest(te.Field, "%s must be an integer from %d to %d, not %s", te.Field, lo, hi, strings.TrimPrefix(te.Value, "number "))
		}
		return badRequest(te.Field, "%s must be %s, not %s", te.Field, jsonKind(te.Type.String()), jsonValueKind(te.Value))
	}
	if rest := bytes.TrimSpace(body[dec.InputOffset():]); len(rest) > 0 {
		return badRequest("", "the request body has data after its JSON object: %.20q", rest)
	}
	return nil
}

// jsonValueKind names the JSON value an UnmarshalTypeError describes ("array", "number 1.5").
func jsonValueKind(v string) string {
	if strings.HasPrefix(v, "array") || strings.HasPrefix(v, "object") {
		return "an " + v
	}
	return "a JSON " + v
}

func intRange(bits int) (int64, int64) {
	return -1 << (bits - 1), 1<<(bits-1) - 1
}

func jsonKind(goType string) string {
	switch {
	case strings.Contains(goType, "string"):
		return "a string"
	case strings.Contains(goType, "float"), strings.Contains(goType, "int"):
		return "a number"
	case strings.Contains(goType, "bool"):
		return "a boolean"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	}
	return "an object"
}

// settings checks the sampling fields shared by both endpoints.
func (s *Server) settings(c *RequestCommon, maxTokens *int) (Sampling, error) {
	temp, topP, seed, n := c.Temperature, c.TopP, c.Seed, c.N
	var sp Sampling
	if err := s.checkModel(c.Model); err != nil {
		return sp, err
	}
	for _, p := range []struct {
		name string
		v    *float64
		to   *float64
	}{{"presence_penalty", c.PresencePenalty, &sp.PresencePenalty}, {"frequency_penalty", c.FrequencyPenalty, &sp.FrequencyPenalty}} {
		if p.v == nil {
			continue
		}
		if *p.v < -maxPenalty || *p.v > maxPenalty {
			return sp, badRequest(p.name, "%s must be between -%d and %d, got %g", p.name, maxPenalty, maxPenalty, *p.v)
		}
		*p.to = *p.v
	}
	if len(c.Stop) > maxStops {
		return sp, badRequest("stop", "at most %d stop strings, got %d", maxStops, len(c.Stop))
	}
	for i, st := range c.Stop {
		if st == "" {
			return sp, badRequest("stop", "stop[%d] is empty", i)
		}
	}
	if n != nil && *n != 1 {
		return sp, badRequest("n", "n must be 1 (this server returns one choice)")
	}
	if temp != nil && (*temp < 0 || *temp > maxTemperature) {
		return sp, badRequest("temperature", "temperature must be between 0 and %g, got %g", float64(maxTemperature), *temp)
	}
	if topP != nil && (*topP <= 0 || *topP > 1) {
		return sp, badRequest("top_p", "top_p must be in (0, 1], got %g", *topP)
	}
	sp.Temperature, sp.TopP = temp, topP
	sp.MaxTokens = s.opts.MaxTokens
	if maxTokens != nil {
		if *maxTokens < 1 {
			return sp, badRequest("max_tokens", "max_tokens must be at least 1, got %d", *maxTokens)
		}
		sp.MaxTokens = *maxTokens
	}
	if seed != nil {
		u := uint64(*seed)
		sp.Seed = &u
	}
	return sp, nil
}

// fit checks the prompt against the context and caps the reply to what is left.
func (s *Server) fit(prompt []int, sp *Sampling, param string) error {
	ctxLen := s.eng.ContextLength()
	if len(prompt) >= ctxLen {
		return &requestError{param: param, code: "context_length_exceeded", msg: fmt.Sprintf("the prompt is %d tokens; this model's context is %d (prompt and reply together)", len(prompt), ctxLen)}
	}
	sp.MaxTokens = min(sp.MaxTokens, ctxLen-len(prompt))
	return nil
}
