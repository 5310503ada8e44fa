package serve

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

const (
	weatherTool = `{"type":"function","function":{"name":"get_weather","description":"Weather of a city.","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}`
	timeTool    = `{"type":"function","function":{"name":"get_time","description":"The time in a zone.","parameters":{"type":"object","properties":{"zone":{"enum":["UTC","CET"]},"24h":{"type":"boolean"}},"required":["zone","24h"],"additionalProperties":false}}}`
)

// apiError decodes an OpenAI error body.
func apiError(t *testing.T, b []byte) APIError {
	t.Helper()
	var e struct {
		Error APIError `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" {
		t.Fatalf("not an OpenAI error body (%v): %s", err, b)
	}
	return e.Error
}

func str(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// refusal is a request the server must refuse with 400: the param its error names ("" for
// none) and what its message says.
type refusal struct{ body, param, want string }

// wantRefused posts each request with key and checks its 400 error.
func wantRefused(t *testing.T, url, key string, refusals []refusal) {
	t.Helper()
	for _, c := range refusals {
		code, b := post(t, url, key, c.body)
		e := apiError(t, b)
		if code != 400 || c.param != "" && str(e.Param) != c.param || c.param == "" && e.Param != nil || !strings.Contains(e.Message, c.want) {
			t.Errorf("%s: %d %s, want 400 on %q with %q", c.body, code, b, c.param, c.want)
		}
	}
}

func postStream(t *testing.T, url, body string) ([]map[string]any, bool) {
	t.Helper()
	res, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		b, err := io.ReadAll(res.Body)
		t.Fatalf("status %d: %s %v", res.StatusCode, b, err)
	}
	return streamChunks(t, res.Body)
}

// streamedCall joins the tool-call deltas of a stream.
func streamedCall(chunks []map[string]any) (name, args string) {
	for _, c := range chunks {
		for _, ch := range c["choices"].([]any) {
			d, _ := ch.(map[string]any)["delta"].(map[string]any)
			tcs, _ := d["tool_calls"].([]any)
			for _, tc := range tcs {
				f := tc.(map[string]any)["function"].(map[string]any)
				n, _ := f["name"].(string)
				a, _ := f["arguments"].(string)
				name, args = name+n, args+a
			}
		}
	}
	return name, args
}

// lastDelta is the delta of the chunk that carries the finish reason.
func lastDelta(t *testing.T, chunks []map[string]any) string {
	t.Helper()
	for _, c := range chunks {
		for _, ch := range c["choices"].([]any) {
			m := ch.(map[string]any)
			if m["finish_reason"] != nil {
				b, err := json.Marshal(m["delta"])
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
		}
	}
	return ""
}

func TestToolChoice(t *testing.T) {
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{})
	url += "/v1/chat/completions"
	tools := `[` + weatherTool + `,` + timeTool + `]`
	// "chat only": the scripted model answers in plain text even with tools offered
	chatOnly := `"messages":[{"role":"user","content":"chat only please"}],"tools":` + tools
	code, b := post(t, url, "", `{`+chatOnly+`}`)
	if r := chatJSON(t, b); code != 200 || *r.Choices[0].FinishReason != "stop" || len(r.Choices[0].Message.ToolCalls) != 0 {
		t.Fatalf("auto, the model answers: %d %s", code, b)
	}
	code, b = post(t, url, "", `{`+chatOnly+`,"tool_choice":"none"}`)
	prompt, err := eng.tok.Decode(eng.lastPrompt())
	if err != nil {
		t.Fatal(err)
	}
	if code != 200 || strings.Contains(prompt, "get_weather") {
		t.Fatalf("none: the tools are still in the prompt (%d %s)", code, b)
	}
	schemas := map[string]string{"get_weather": weatherTool, "get_time": timeTool}
	for _, c := range []struct{ choice, want string }{
		{`"required"`, ""}, // either tool
		{`{"type":"function","function":{"name":"get_weather"}}`, "get_weather"},
		{`{"type":"function","function":{"name":"get_time"}}`, "get_time"},
	} {
		code, b := post(t, url, "", `{`+chatOnly+`,"tool_choice":`+c.choice+`}`)
		r := chatJSON(t, b)
		msg := r.Choices[0].Message
		if code != 200 || *r.Choices[0].FinishReason != "tool_calls" || len(msg.ToolCalls) != 1 {
			t.Fatalf("tool_choice %s: %d %s", c.choice, code, b)
		}
		call := msg.ToolCalls[0].Function
		var tool Tool
		if err := json.Unmarshal([]byte(schemas[call.Name]), &tool); err != nil {
			t.Fatalf("tool_choice %s: called %q: %v", c.choice, call.Name, err)
		}
		var args any
		if err := json.Unmarshal([]byte(call.Arguments), &args); err != nil {
			t.Fatalf("tool_choice %s: arguments %q: %v", c.choice, call.Arguments, err)
		}
		if err := validate(args, mustAny(t, string(tool.Function.Parameters)), "$"); err != nil || c.want != "" && call.Name != c.want {
			t.Fatalf("tool_choice %s: call %s(%s): %v", c.choice, call.Name, call.Arguments, err)
		}
		if msg.Content != nil && (*msg.Content == "" || strings.Contains(*msg.Content, "Thought")) {
			t.Fatalf("tool_choice %s: content %q: a label kept, or empty rather than null", c.choice, *msg.Content)
		}
	}
	// on the model's own path the call is unchanged; streamed, the call comes whole
	chunks, done := postStream(t, url, `{"stream":true,"messages":[{"role":"user","content":"Weather in Paris?"}],"tools":`+tools+`,"tool_choice":{"type":"function","function":{"name":"get_weather"}}}`)
	if name, args := streamedCall(chunks); !done || name != "get_weather" || args != `{"city": "Paris"}` {
		t.Fatalf("streamed named call %s(%s), done %v", name, args, done)
	}
	if d := lastDelta(t, chunks); d != `{}` {
		t.Fatalf("the last chunk's delta is %s, want {}", d)
	}
	text, _, _ := deltaText(chunks)
	if text != "I should call the weather API." {
		t.Fatalf("streamed content %q, want the thought without its label", text)
	}
	wantRefused(t, url, "", []refusal{
		{`{"messages":[{"role":"user","content":"x"}],"tool_choice":"required"}`, "tool_choice", "only allowed when tools are given"},
		{`{` + chatOnly + `,"tool_choice":{"type":"function","function":{"name":"nope"}}}`, "tool_choice", `no tool named "nope"`},
		{`{` + chatOnly + `,"tool_choice":"sometimes"}`, "tool_choice", `"none", "auto", "required"`},
		{`{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string","pattern":"x"}}}}}],"tool_choice":"required"}`, "tools[0].function.parameters", `"pattern"`},
	})
}

func TestResponseFormat(t *testing.T) {
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{})
	url += "/v1/chat/completions"
	schema := mustAny(t, recipeSchema)
	format := `{"type":"json_schema","json_schema":{"name":"recipe","strict":true,"schema":` + recipeSchema + `}}`
	for _, c := range []struct{ prompt, format string }{
		{"Hello", `{"type":"json_object"}`},
		{"Hello", format},
		{"a recipe please", format},
	} {
		body := fmt.Sprintf(`{"messages":[{"role":"user","content":%q}],"response_format":%s}`, c.prompt, c.format)
		code, b := post(t, url, "", body)
		if code != 200 {
			t.Fatalf("%s: %d %s", body, code, b)
		}
		content := str(chatJSON(t, b).Choices[0].Message.Content)
		var v any
		if err := json.Unmarshal([]byte(content), &v); err != nil {
			t.Fatalf("%s: %q is not JSON: %v", body, content, err)
		}
		if _, ok := v.(map[string]any); !ok {
			t.Fatalf("%s: %q is not an object", body, content)
		}
		if strings.Contains(c.format, "json_schema") {
			if err := validate(mustAny(t, content), schema, "$"); err != nil {
				t.Fatalf("%s: %q: %v", body, content, err)
			}
		}
		if c.prompt == "a recipe please" && content != recipeJSON {
			t.Fatalf("on the model's own path the reply changed: %q", content)
		}
		chunks, done := postStream(t, url, strings.Replace(body, "{", `{"stream":true,`, 1))
		if text, _, _ := deltaText(chunks); !done || text != content {
			t.Fatalf("streamed %q, not streamed %q", text, content)
		}
	}
	const ask = `{"messages":[{"role":"user","content":"x"}],"response_format":`
	wantRefused(t, url, "", []refusal{
		{ask + `{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"string","format":"email"}}}}`, "response_format.json_schema.schema", `unsupported schema keyword "format"`},
		{ask + `{"type":"json_schema"}}`, "response_format.json_schema", "json_schema"},
		{ask + `{"type":"yaml"}}`, "response_format.type", `"text", "json_object" or "json_schema"`},
	})
}

func TestLogprobs(t *testing.T) {
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{})
	url += "/v1/chat/completions"
	body := `{"messages":[{"role":"user","content":"Hi"}],"logprobs":true,"top_logprobs":3}`
	code, b := post(t, url, "", body)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	var r struct {
		Choices []struct {
			Message  struct{ Content string }
			Logprobs *struct {
				Content []struct {
					Token       string
					Logprob     float64
					Bytes       []int
					TopLogprobs []struct {
						Token   string
						Logprob float64
						Bytes   []int
					} `json:"top_logprobs"`
				}
			}
		}
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Choices[0].Logprobs == nil {
		t.Fatalf("%v: %s", err, b)
	}
	var joined []byte
	for _, tl := range r.Choices[0].Logprobs.Content {
		if tl.Logprob > 0 || len(tl.TopLogprobs) != 3 || tl.TopLogprobs[0].Logprob < tl.TopLogprobs[2].Logprob {
			t.Fatalf("token %+v", tl)
		}
		for _, x := range tl.Bytes {
			joined = append(joined, byte(x))
		}
	}
	if string(joined) != r.Choices[0].Message.Content {
		t.Fatalf("the tokens' bytes join to %q, the reply is %q", joined, r.Choices[0].Message.Content)
	}
	chunks, _ := postStream(t, url, strings.Replace(body, "{", `{"stream":true,`, 1))
	n := 0
	for _, c := range chunks {
		for _, ch := range c["choices"].([]any) {
			if lp, ok := ch.(map[string]any)["logprobs"].(map[string]any); ok {
				n += len(lp["content"].([]any))
			}
		}
	}
	if n != len(r.Choices[0].Logprobs.Content) {
		t.Fatalf("the stream carried %d token logprobs, the response %d", n, len(r.Choices[0].Logprobs.Content))
	}
	// the legacy completions' format
	code, b = post(t, strings.Replace(url, "chat/", "", 1), "", `{"prompt":"stop test","logprobs":2,"max_tokens":5}`)
	var c struct {
		Choices []struct {
			Text     string
			Logprobs struct {
				Tokens        []string
				TokenLogprobs []float64            `json:"token_logprobs"`
				TopLogprobs   []map[string]float64 `json:"top_logprobs"`
				TextOffset    []int                `json:"text_offset"`
			}
		}
	}
	if err := json.Unmarshal(b, &c); code != 200 || err != nil {
		t.Fatalf("completions with logprobs: %d %s", code, b)
	}
	lp := c.Choices[0].Logprobs
	if strings.Join(lp.Tokens, "") != c.Choices[0].Text || len(lp.TokenLogprobs) != 5 || len(lp.TopLogprobs[0]) != 2 || lp.TextOffset[1] != len(lp.Tokens[0]) {
		t.Fatalf("completions logprobs %+v for %q", lp, c.Choices[0].Text)
	}
	wantRefused(t, url, "", []refusal{
		{`{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}`, "top_logprobs", ""},
		{`{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}`, "top_logprobs", ""},
	})
}

func TestMessagesAsClientsSendThem(t *testing.T) {
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{Aliases: []string{"gpt-4o-mini"}})
	chat := url + "/v1/chat/completions"
	lastPrompt := func() string {
		p, err := eng.tok.Decode(eng.lastPrompt())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct{ messages, prompt string }{
		{`[{"role":"developer","content":"Be terse."},{"role":"user","content":"hi"}]`, "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"},
		{`[{"role":"user","content":"one"},{"role":"user","content":"two"}]`, "<|im_start|>user\none\ntwo<|im_end|>\n<|im_start|>assistant\n"},
		{`[{"role":"user","content":"q"},{"role":"assistant","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"r"}]`, "<|im_start|>assistant\na\nb<|im_end|>\n<|im_start|>user\nr<|im_end|>"},
		{`[{"role":"user","content":"Say hi"},{"role":"assistant","content":"Sure: "}]`, "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nSure: "},
	} {
		code, b := post(t, chat, "", `{"model":"gpt-4o-mini","messages":`+c.messages+`}`)
		if code != 200 {
			t.Fatalf("%s: %d %s", c.messages, code, b)
		}
		if p := lastPrompt(); !strings.Contains(p, c.prompt) || (strings.HasSuffix(c.prompt, ": ") && !strings.HasSuffix(p, c.prompt)) {
			t.Fatalf("%s: prompt %q, want it to contain %q", c.messages, p, c.prompt)
		}
	}
	code, b := post(t, chat, "", `{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}`)
	if e := apiError(t, b); code != 404 || str(e.Code) != "model_not_found" || str(e.Param) != "model" {
		t.Fatalf("unknown model: %d %s", code, b)
	}
	for path, want := range map[string]int{"/v1/models/scripted": 200, "/v1/models/gpt-4o-mini": 200, "/v1/models/gpt-5": 404} {
		res, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != want || want == 200 && !strings.Contains(string(b), `"object":"model"`) {
			t.Fatalf("GET %s: %d %s", path, res.StatusCode, b)
		}
	}
	// streamed with tools, a plain answer streams as it is generated; the last delta is {}
	chunks, _ := postStream(t, chat, `{"stream":true,"messages":[{"role":"user","content":"chat only"}],"tools":[`+weatherTool+`]}`)
	if text, finish, _ := deltaText(chunks); !strings.HasPrefix(text, "You said: chat only") || finish != "stop" || len(chunks) < 5 {
		t.Fatalf("streamed plain answer with tools: %q %s in %d chunks", text, finish, len(chunks))
	}
	if d := lastDelta(t, chunks); d != `{}` {
		t.Fatalf("the last chunk's delta is %s, want {}", d)
	}
}

func TestValidationAsOpenAI(t *testing.T) {
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{APIKey: "k"})
	chat := url + "/v1/chat/completions"
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	wantRefused(t, chat, "k", []refusal{
		{`{` + msgs + `,"presence_penalty":2.5}`, "presence_penalty", "between -2 and 2"},
		{`{` + msgs + `,"frequency_penalty":-3}`, "frequency_penalty", "between -2 and 2"},
		{`{` + msgs + `,"stop":["a","b","c","d","e"]}`, "stop", "at most 4"},
		{`{` + msgs + `,"seed":18446744073709551616}`, "seed", "seed must be an integer from -9223372036854775808 to 9223372036854775807"},
		{`{` + msgs + `,"max_tokens":1e30}`, "max_tokens", "max_tokens must be an integer"},
		{`{` + msgs + `}]garbage`, "", "data after its JSON object"},
		{`[{` + msgs + `}]`, "", "the request body must be a JSON object, not an array"},
	})
	code, b := post(t, chat, "k", `{`+msgs+`,"presence_penalty":1.5,"frequency_penalty":-0.5}`)
	if s := eng.lastSampling(); code != 200 || s.PresencePenalty != 1.5 || s.FrequencyPenalty != -0.5 {
		t.Fatalf("penalties did not reach the engine: %d %s %+v", code, b, s)
	}
	for _, c := range []struct{ method, path, allow string }{
		{"GET", "/v1/chat/completions", "POST"},
		{"PUT", "/v1/completions", "POST"},
		{"POST", "/v1/models", "GET"},
	} {
		req, err := http.NewRequest(c.method, url+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer k")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != 405 || res.Header.Get("Allow") != c.allow || apiError(t, b).Type == "" {
			t.Errorf("%s %s: %d Allow %q %s", c.method, c.path, res.StatusCode, res.Header.Get("Allow"), b)
		}
	}
	req, err := http.NewRequest("POST", chat, strings.NewReader(`{`+msgs+`}`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 401 || res.Header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("no key: %d WWW-Authenticate %q", res.StatusCode, res.Header.Get("WWW-Authenticate"))
	}
	req, err = http.NewRequest("POST", chat, strings.NewReader(`{`+msgs+`}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "bearer k")
	if res, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf(`"bearer k": %d`, res.StatusCode)
	}
}

// TestModelEngineConstrained: the real tiny model (random weights, sampled at temperature
// 1) answers with JSON its schema allows, calls the required tool with valid arguments, and
// gives one log-probability per token. The schemas have no free strings, so every reply
// ends well within max_tokens.
func TestModelEngineConstrained(t *testing.T) {
	url := serveTiny(t) + "/v1/chat/completions"
	const bounded = `{"type":"object","properties":{"ok":{"type":"boolean"},"color":{"enum":["red","green"]},"n":{"type":"integer"},"tags":{"type":"array","items":{"type":["boolean","null"]},"maxItems":3}},"required":["ok","color","n","tags"],"additionalProperties":false}`
	for seed := range 3 {
		body := fmt.Sprintf(`{"messages":[{"role":"user","content":"Describe a thing"}],"max_tokens":600,"seed":%d,"temperature":1,"logprobs":true,"top_logprobs":2,"response_format":{"type":"json_schema","json_schema":{"name":"thing","schema":%s}}}`, seed, bounded)
		code, b := post(t, url, "", body)
		if code != 200 {
			t.Fatalf("%d %s", code, b)
		}
		r := chatJSON(t, b)
		content := str(r.Choices[0].Message.Content)
		if *r.Choices[0].FinishReason != "stop" {
			t.Fatalf("seed %d: finish %s after %q", seed, *r.Choices[0].FinishReason, content)
		}
		if err := validate(mustAny(t, content), mustAny(t, bounded), "$"); err != nil {
			t.Fatalf("seed %d: %q: %v", seed, content, err)
		}
		if n := len(r.Choices[0].Logprobs.Content); n != r.Usage.CompletionTokens {
			t.Fatalf("seed %d: %d logprobs for %d tokens", seed, n, r.Usage.CompletionTokens)
		}
		body = fmt.Sprintf(`{"messages":[{"role":"user","content":"What time is it?"}],"max_tokens":600,"seed":%d,"temperature":1,"tools":[%s,%s],"tool_choice":"required"}`, seed, weatherTool, timeTool)
		code, b = post(t, url, "", body)
		r = chatJSON(t, b)
		msg := r.Choices[0].Message
		if code != 200 || *r.Choices[0].FinishReason != "tool_calls" || len(msg.ToolCalls) != 1 {
			t.Fatalf("seed %d, tool_choice required: %d %s", seed, code, b)
		}
		if c := msg.ToolCalls[0].Function; c.Name == "get_time" {
			if err := validate(mustAny(t, c.Arguments), mustAny(t, `{"type":"object","properties":{"zone":{"enum":["UTC","CET"]},"24h":{"type":"boolean"}},"required":["zone","24h"],"additionalProperties":false}`), "$"); err != nil {
				t.Fatalf("seed %d: get_time(%s): %v", seed, c.Arguments, err)
			}
		} else if c.Name != "get_weather" || !json.Valid([]byte(c.Arguments)) {
			t.Fatalf("seed %d: call %s(%s)", seed, c.Name, c.Arguments)
		}
	}
}
