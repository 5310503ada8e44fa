package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

const recipeSchema = `{"type":"object","properties":{
	"name":{"type":"string"},
	"minutes":{"type":"integer"},
	"vegan":{"type":"boolean"},
	"course":{"enum":["starter","main","dessert"]},
	"ingredients":{"type":"array","items":{"type":"string"},"minItems":1,"maxItems":3},
	"rating":{"type":["number","null"]},
	"note":{"anyOf":[{"type":"string"},{"type":"object","properties":{"by":{"type":"string"}},"required":["by"],"additionalProperties":false}]}
},"required":["name","minutes","course"],"additionalProperties":false,"$schema":"http://json-schema.org/draft-07/schema#","title":"Recipe"}`

func mustSchema(t testing.TB, raw string) *schema {
	t.Helper()
	s, err := compileSchema(json.RawMessage(raw))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGrammarAcceptsExactlyTheSchema(t *testing.T) {
	recipe := mustSchema(t, recipeSchema)
	zodInt := mustSchema(t, `{"type":"integer","minimum":-9007199254740991,"maximum":9007199254740991}`)
	percent := mustSchema(t, `{"type":"number","minimum":0,"maximum":100}`)
	cases := []struct {
		s    *schema
		text string
		ok   bool
	}{
		{anySchema, `{"a": [1, -2.5e+3, true, null, "x\u00e9\n"], "b": {}}`, true},
		{anySchema, `{}`, true},
		{anySchema, `[]`, true},
		{anySchema, `"héllo"`, true},
		{anySchema, `{"a": 1,}`, false},
		{anySchema, `{"a" 1}`, false},
		{anySchema, `01`, false},
		{anySchema, `1.`, false},
		{anySchema, `{"a": 1} `, false},
		{anySchema, `{"a":"` + "\x01" + `"}`, false},
		{anySchema, "\"\xed\xa0\x80\"", false}, // a surrogate in UTF-8
		{anySchema, "{" + strings.Repeat(" ", maxWhitespace+1) + "}", false},
		{anySchema, `[` + strings.Repeat("9", maxDigits+1) + `]`, false},
		{anyObject, `[1]`, false},
		{recipe, `{"name": "Soup", "minutes": 20, "course": "starter"}`, true},
		{recipe, `{"course":"main","minutes":5,"name":"x","vegan":false,"ingredients":["a","b","c"],"rating":null,"note":{"by":"me"}}`, true},
		{recipe, `{"name": "Soup", "minutes": 20}`, false},                                                 // course is required
		{recipe, `{"name": "Soup", "minutes": 2.5, "course": "main"}`, false},                              // not an integer
		{recipe, `{"name": "Soup", "minutes": 20, "course": "brunch"}`, false},                             // not in the enum
		{recipe, `{"name": "Soup", "minutes": 20, "course": "main", "extra": 1}`, false},                   // closed
		{recipe, `{"name": "Soup", "name": "Soup", "minutes": 20, "course": "main"}`, false},               // twice
		{recipe, `{"name": "S", "minutes": 1, "course": "main", "ingredients": []}`, false},                // minItems
		{recipe, `{"name": "S", "minutes": 1, "course": "main", "ingredients": ["a","b","c","d"]}`, false}, // maxItems
		{recipe, `{"name": "S", "minutes": 1, "course": "main", "note": {}}`, false},
		{recipe, `{"name": "S", "minutes": 1, "course": "main", "rating": 4.5}`, true},
		{zodInt, `-123456789012345`, true},
		{zodInt, `1234567890123456`, false}, // 16 digits may exceed 2^53-1
		{zodInt, `1e3`, false},
		{percent, `99.5`, true},
		{percent, `-1`, false},
		{percent, `100`, false}, // inside the bounds, but three digits may exceed them
		{percent, `1e1`, false},
	}
	for _, c := range cases {
		if got := startState(c.s).accepts([]byte(c.text)); got != c.ok {
			t.Errorf("%s: accepted %v, want %v", c.text, got, c.ok)
		}
	}
	call := callState([]string{"get_weather", "get_time"}, []*schema{mustSchema(t, `{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`), anySchema}, nil, false)
	for text, ok := range map[string]bool{
		"Thought: I need the weather.\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}": true,
		"Thought: \nAction: get_time\nAction Input: {}":                                          true,
		"Thought: x\nAction: get_weather\nAction Input: {}":                                      false,
		"Thought: x\nAction: get_date\nAction Input: {}":                                         false,
		"Final Answer: no": false,
	} {
		if got := call.accepts([]byte(text)); got != ok {
			t.Errorf("%q: accepted %v, want %v", text, got, ok)
		}
	}
}

func TestSchemaRefusesWhatItCannotEnforce(t *testing.T) {
	for raw, want := range map[string]string{
		`{"type":"string","pattern":"^a"}`:                                    `$: unsupported schema keyword "pattern"`,
		`{"type":"object","properties":{"a":{"$ref":"#/$defs/x"}}}`:           `$.properties.a: unsupported schema keyword "$ref"`,
		`{"type":"object","properties":{"n":{"type":"integer","minimum":1}}}`: `$.properties.n.minimum: minimum 1 above 0 is not supported`,
		`{"type":"string","minLength":1}`:                                     `$: unsupported schema keyword "minLength"`,
		`{"type":"object","required":["b"],"properties":{"a":{}}}`:            `required property "b"`,
		`{"type":"strin"}`: `unknown type "strin"`,
		`[1]`:              `a schema must be an object`,
	} {
		_, err := compileSchema(json.RawMessage(raw))
		var se *SchemaError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one containing %q", raw, err, want)
		}
	}
}

// TestMaskMatchesBruteForce: the sorted-vocabulary walk allows exactly the tokens whose
// bytes the automaton takes one by one.
func TestMaskMatchesBruteForce(t *testing.T) {
	tok := newScripted(t).tok
	v := vocabOf(tok)
	recipe := mustSchema(t, recipeSchema)
	call := callState([]string{"get_weather", "get_time"}, []*schema{recipe, anySchema}, recipe, false)
	for _, c := range []struct {
		start  state
		prefix string
	}{
		{startState(recipe), ``}, {startState(recipe), `{"na`}, {startState(recipe), `{"name": "So`}, {startState(recipe), `{"name": "Soup", "minutes": 2`},
		{startState(recipe), `{"name": "Soup", "course": "ma`}, {startState(recipe), `{"name":"x","minutes":1,"course":"main"`},
		{call, ``}, {call, `Thought: I will`}, {call, "Thought: " + strings.Repeat("x", maxThoughtBytes-2)}, {call, "Thought: ok\nAction: get_"},
	} {
		st, prefix := c.start, c.prefix
		for _, b := range []byte(prefix) {
			st = st.advance(b)
		}
		if len(st) == 0 {
			t.Fatalf("%q: the automaton refused the prefix", prefix)
		}
		bits := make([]uint64, (v.size+63)/64)
		v.allowed(st, bits)
		n := 0
		for id := range tok.OrdinarySize() {
			b, err := tok.TokenBytes(id)
			if err != nil {
				t.Fatal(err)
			}
			s := st
			for _, x := range b {
				if s = s.advance(x); len(s) == 0 {
					break
				}
			}
			want := len(s) > 0
			if got := bits[id/64]&(1<<(id%64)) != 0; got != want {
				t.Fatalf("%q then token %d %q: allowed %v, want %v", prefix, id, b, got, want)
			}
			if want {
				n++
			}
		}
		if n == 0 {
			t.Fatalf("%q: no token allowed", prefix)
		}
	}
}

// FuzzSchemaGrammar: any schema either compiles or is refused with a SchemaError; whatever
// its automaton accepts is valid JSON that validates against the schema; the compact JSON
// of any value a walk through the automaton can produce is accepted.
func FuzzSchemaGrammar(f *testing.F) {
	f.Add(recipeSchema, `{"name":"a","minutes":1,"course":"main"}`)
	f.Add(`{}`, `{"a":[1,{"b":null}]}`)
	f.Add(`{"type":"array","items":{"enum":[1,"x",null]},"maxItems":2}`, `[1,"x"]`)
	f.Add(`{"anyOf":[{"type":"integer"},{"type":"string"}]}`, `"1"`)
	f.Add(`{"type":"number","minimum":-1000,"maximum":50}`, `-999.5`)
	f.Fuzz(func(t *testing.T, raw, text string) {
		s, err := compileSchema(json.RawMessage(raw))
		if err != nil {
			var se *SchemaError
			if !errors.As(err, &se) {
				t.Fatalf("%s: %v is not a SchemaError", raw, err)
			}
			return
		}
		if !startState(s).accepts([]byte(text)) {
			return
		}
		if !json.Valid([]byte(text)) || !utf8.ValidString(text) {
			t.Fatalf("schema %s accepted invalid JSON %q", raw, text)
		}
		var v any
		dec := json.NewDecoder(strings.NewReader(text))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(raw) == "" {
			raw = "{}" // no schema: any value
		}
		if err := validate(v, mustAny(t, raw), "$"); err != nil {
			t.Fatalf("schema %s accepted %s: %v", raw, text, err)
		}
	})
}

func mustAny(t *testing.T, raw string) any {
	var v any
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

var integerRE = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)

// validate checks v against the schema subset directly from the schema's JSON (a reference
// independent of the compiler and the automaton).
func validate(v any, sch any, path string) error {
	if b, ok := sch.(bool); ok {
		if b {
			return nil
		}
		return errors.New(path + ": schema false")
	}
	m := sch.(map[string]any)
	if n, _ := m["nullable"].(bool); n && v == nil {
		return nil
	}
	if c, ok := m["const"]; ok {
		return sameJSON(v, c, path)
	}
	if e, ok := m["enum"].([]any); ok {
		for _, x := range e {
			if sameJSON(v, x, path) == nil {
				return nil
			}
		}
		return errors.New(path + ": not in the enum")
	}
	for _, k := range []string{"anyOf", "oneOf"} {
		if alts, ok := m[k].([]any); ok {
			for _, a := range alts {
				if validate(v, a, path) == nil {
					return nil
				}
			}
			return errors.New(path + ": no alternative matches")
		}
	}
	types := map[string]bool{}
	switch t := m["type"].(type) {
	case string:
		types[t] = true
	case []any:
		for _, x := range t {
			types[x.(string)] = true
		}
	default:
		if m["properties"] != nil || m["required"] != nil || m["additionalProperties"] != nil {
			types["object"] = true
		} else if m["items"] != nil {
			types["array"] = true
		} else {
			return nil
		}
	}
	switch x := v.(type) {
	case nil:
		if !types["null"] {
			return errors.New(path + ": null")
		}
	case bool:
		if !types["boolean"] {
			return errors.New(path + ": a boolean")
		}
	case string:
		if !types["string"] {
			return errors.New(path + ": a string")
		}
	case json.Number:
		if !types["number"] && !(types["integer"] && integerRE.MatchString(x.String())) {
			return errors.New(path + ": a number " + x.String())
		}
		f, err := x.Float64()
		if err != nil {
			return err
		}
		if lo, ok := m["minimum"].(json.Number); ok {
			if b, _ := lo.Float64(); f < b {
				return errors.New(path + ": below the minimum")
			}
		}
		if hi, ok := m["maximum"].(json.Number); ok {
			if b, _ := hi.Float64(); f > b {
				return errors.New(path + ": above the maximum")
			}
		}
	case []any:
		if !types["array"] {
			return errors.New(path + ": an array")
		}
		if n, ok := m["minItems"].(json.Number); ok {
			if k, _ := n.Int64(); int64(len(x)) < k {
				return errors.New(path + ": too few items")
			}
		}
		if n, ok := m["maxItems"].(json.Number); ok {
			if k, _ := n.Int64(); int64(len(x)) > k {
				return errors.New(path + ": too many items")
			}
		}
		for _, it := range x {
			if items, ok := m["items"]; ok {
				if err := validate(it, items, path+"[]"); err != nil {
					return err
				}
			}
		}
	case map[string]any:
		if !types["object"] {
			return errors.New(path + ": an object")
		}
		props, _ := m["properties"].(map[string]any)
		for _, r := range asList(m["required"]) {
			if _, ok := x[r.(string)]; !ok {
				return errors.New(path + ": missing " + r.(string))
			}
		}
		for k, val := range x {
			p, ok := props[k]
			if !ok {
				if ap, isBool := m["additionalProperties"].(bool); len(props) > 0 && (!isBool || !ap) || isBool && !ap {
					return errors.New(path + ": extra key " + k)
				}
				continue
			}
			if err := validate(val, p, path+"."+k); err != nil {
				return err
			}
		}
	}
	return nil
}

func asList(v any) []any { l, _ := v.([]any); return l }

func sameJSON(a, b any, path string) error {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
		return errors.New(path + ": not the constant")
	}
	return nil
}
