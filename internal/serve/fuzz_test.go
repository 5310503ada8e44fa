package serve

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzChatRequest: any body is either decoded and planned, within the context and, when
// constrained, with some token allowed first, or refused with a request error; nothing
// panics.
func FuzzChatRequest(f *testing.F) {
	for _, seed := range []string{
		`{"messages":[{"role":"user","content":"hi"}]}`,
		`{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","content":"r"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"a":[1,2,{"b":"\u00e9"}]}}}]}`,
		`{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y","function_call":{"name":"g","arguments":"1"}},{"role":"function","content":"z"}],"functions":[{"name":"g"}],"stop":["a","b"],"max_tokens":3,"n":1}`,
		`{"messages":[{"role":"developer","content":"d"},{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"assistant","content":"{\"k\": "}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"k":{"enum":[1,2]}},"required":["k"]}}},"logprobs":true,"top_logprobs":3}`,
		`{"messages":[{"role":"user","content":"t"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":99}}}}}],"tool_choice":{"type":"function","function":{"name":"f"}},"response_format":{"type":"json_object"}}`,
		`{"messages":[{"role":"user","content":"t"}],"seed":1e99,"presence_penalty":3}] `,
	} {
		f.Add(seed)
	}
	eng := &scripted{context: 512}
	s := New(eng, Options{})
	f.Fuzz(func(t *testing.T, body string) {
		if eng.tok == nil {
			eng.tok = newScripted(t).tok
		}
		var req ChatRequest
		if err := decodeBody([]byte(body), &req); err != nil {
			if _, ok := err.(*requestError); !ok {
				t.Fatalf("%q: %v is not a request error", body, err)
			}
			return
		}
		p, err := s.planChat(&req)
		if err != nil {
			if _, ok := err.(*requestError); !ok {
				t.Fatalf("%q: %v is not a request error", body, err)
			}
			return
		}
		if len(p.prompt) == 0 || len(p.prompt) >= eng.context || p.samp.MaxTokens < 1 || len(p.prompt)+p.samp.MaxTokens > eng.context {
			t.Fatalf("%q: prompt of %d tokens with %d new tokens in a context of %d", body, len(p.prompt), p.samp.MaxTokens, eng.context)
		}
		if c, ok := p.samp.Constraint.(*grammarConstraint); ok && !slices.ContainsFunc(c.bits(), func(w uint64) bool { return w != 0 }) {
			t.Fatalf("%q: the constraint allows no first token", body)
		}
	})
}

// FuzzStopMatcher: what the matcher shows is the text up to the first stop string, however
// the text is cut into pieces.
func FuzzStopMatcher(f *testing.F) {
	f.Add("alpha beta END gamma", "END", 3)
	f.Add("ababab", "bab", 1)
	f.Add("héllo wörld", "ö", 2)
	f.Fuzz(func(t *testing.T, text, stop string, cut int) {
		if stop == "" || cut <= 0 || !utf8.ValidString(text) || !utf8.ValidString(stop) {
			return // the server only ever matches decoded text
		}
		m := stopMatcher{stops: []string{stop}}
		var shown string
		rs := []rune(text)
		for i := 0; i < len(rs); i += cut {
			shown += m.push(string(rs[i:min(i+cut, len(rs))]))
		}
		if !m.hit {
			shown += m.flush()
		}
		want := text
		if i := strings.Index(text, stop); i >= 0 {
			want = text[:i]
		}
		if shown != want || m.hit != strings.Contains(text, stop) {
			t.Fatalf("text %q stop %q cut %d: shown %q (hit %v), want %q", text, stop, cut, shown, m.hit, want)
		}
	})
}
