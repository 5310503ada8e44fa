package serve

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestAlternativesUpToTheLimit: every one of maxAlternatives alternatives (anyOf, or the
// functions of a required call) can be produced, and one more is refused with a message
// instead of being dropped.
func TestAlternativesUpToTheLimit(t *testing.T) {
	union := func(n int) string {
		alts := make([]string, n)
		for i := range alts {
			alts[i] = fmt.Sprintf(`{"type":"object","properties":{"p%d":{"type":"integer"}},"required":["p%d"],"additionalProperties":false}`, i, i)
		}
		return `{"anyOf":[` + strings.Join(alts, ",") + `]}`
	}
	s := mustSchema(t, union(maxAlternatives))
	for _, i := range []int{0, maxAlternatives - 1} {
		if text := fmt.Sprintf(`{"p%d":1}`, i); !startState(s).accepts([]byte(text)) {
			t.Errorf("%s refused by a union of %d", text, maxAlternatives)
		}
	}
	var se *SchemaError
	if _, err := compileSchema([]byte(union(maxAlternatives + 1))); !errors.As(err, &se) || !strings.Contains(err.Error(), "at most 64") {
		t.Errorf("a union of %d: %v", maxAlternatives+1, err)
	}

	funcs := func(n int) *chatPlan {
		p := &chatPlan{}
		for i := 0; i < n; i++ {
			p.funcs = append(p.funcs, Function{Name: fmt.Sprintf("tool%d", i), Parameters: []byte(`{"type":"object"}`)})
		}
		return p
	}
	st, err := funcs(maxAlternatives).constraint(toolChoice{mode: "required"}, nil, "", true)
	if err != nil {
		t.Fatal(err)
	}
	last := fmt.Sprintf("Thought: x\nAction: tool%d\nAction Input: {}", maxAlternatives-1)
	if !st.accepts([]byte(last)) {
		t.Errorf("the last of %d functions cannot be called", maxAlternatives)
	}
	_, err = funcs(maxAlternatives+1).constraint(toolChoice{mode: "required"}, nil, "", true)
	var re *requestError
	if !errors.As(err, &re) || re.param != "tools" {
		t.Errorf("%d functions under a required call: %v", maxAlternatives+1, err)
	}
}

// TestOpenObjectKeysAreNotRepeated: beside declared properties an open object takes other
// keys, but never a declared name again (which would let a second value break its schema).
func TestOpenObjectKeysAreNotRepeated(t *testing.T) {
	s := mustSchema(t, `{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":true}`)
	for text, ok := range map[string]bool{
		`{"n":1}`:              true,
		`{"n":1,"m":"x"}`:      true,
		`{"m":"x","n":1}`:      true,
		`{"nn":2,"n":1}`:       true,
		`{"n":"x"}`:            false,
		`{"n":1,"n":"x"}`:      false,
		`{"n":"x","n":1}`:      false,
		`{"\u006e":"x","n":1}`: false,
	} {
		if got := startState(s).accepts([]byte(text)); got != ok {
			t.Errorf("%s: accepted %v, want %v", text, got, ok)
		}
	}
}
