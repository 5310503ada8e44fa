package serve

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// recipeJSON is the scripted reply to a request for a recipe (valid under recipeSchema).
const recipeJSON = `{"name": "Pancakes", "minutes": 20, "course": "dessert", "ingredients": ["flour", "milk"]}`

// scripted is a test double of Engine, used only by these tests: it answers by rules on the
// prompt's text, token by token through the real tokenizer, so the server's streaming, stop
// strings, function calling, queueing and cancellation can be checked exactly.
//
//	a tool result in the prompt ("Observation:" then "Thought:")  -> a ReAct final answer
//	"chat only"                                                   -> an echo, even with tools
//	tools offered ("You have access to the following APIs")      -> a ReAct action
//	"recipe"                                                      -> recipeJSON
//	"long" in the prompt ("slow": 30 ms per token)               -> 400 words
//	"stop test"                                                  -> "alpha beta END gamma delta"
//	otherwise                                                    -> an echo with Markdown
//
// It chooses each token as a model would, through model.Sampler (greedy): the script's next
// token scores highest, so a request's constraint and log-probabilities act on it. Once a
// constraint forbids the script, it prefers tokens that end what is open (a newline ends the
// thought before a call; then ", }, ], {, 0, t), and otherwise the lowest id allowed.
type scripted struct {
	tok       *tokenizer.Tokenizer
	context   int
	mu        sync.Mutex
	prompt    []int // the last generation's (only the last is kept: a soak runs thousands)
	sampling  Sampling
	cancelled int
	started   chan struct{} // receives when a generation starts (if not nil)
}

func (e *scripted) ModelID() string                 { return "scripted" }
func (e *scripted) Tokenizer() *tokenizer.Tokenizer { return e.tok }
func (e *scripted) ContextLength() int              { return e.context }
func (e *scripted) MaxWindow() int                  { return 6144 }

func (e *scripted) lastPrompt() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.prompt
}

func (e *scripted) lastSampling() Sampling {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sampling
}

func (e *scripted) cancels() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cancelled
}

// reply is the script for a prompt and how long each token takes.
func (e *scripted) reply(text string) (string, time.Duration) {
	last := text // a raw completion prompt, or the last user message of a chat
	if i := strings.LastIndex(text, "<|im_start|>user\n"); i >= 0 {
		last = text[i+len("<|im_start|>user\n"):]
		last = last[:max(strings.Index(last, "<|im_end|>"), 0)]
	}
	if i := strings.LastIndex(last, "\n\nQuestion: "); i >= 0 {
		last = last[i+len("\n\nQuestion: "):]
	}
	switch {
	case strings.HasSuffix(text, "\nThought:") && strings.Contains(text, "\nObservation: "):
		return " I now know the final answer\nFinal Answer: It is sunny in Paris, 22 degrees.", 0
	case strings.Contains(last, "chat only"):
	case strings.Contains(text, "You have access to the following APIs"):
		return "Thought: I should call the weather API.\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}\nObservation: (the model would invent this)", 0
	case strings.Contains(last, "recipe"):
		return recipeJSON, 0
	case strings.Contains(last, "slow"), strings.Contains(last, "long"):
		delay := time.Duration(0)
		if strings.Contains(last, "slow") {
			delay = 30 * time.Millisecond
		}
		return strings.Repeat("word ", 400), delay
	case strings.Contains(last, "stop test"):
		return "alpha beta END gamma delta", 0
	}
	return fmt.Sprintf("You said: %s\n\n**Hello** from the `scripted` engine.\n\n```go\nfmt.Println(42)\n```", last), 0
}

func (e *scripted) Generate(ctx context.Context, prompt []int, s Sampling, emit func(model.TokenLogprob) error) ([]int, model.StopReason, error) {
	e.mu.Lock()
	e.prompt, e.sampling = prompt, s
	e.mu.Unlock()
	if e.started != nil {
		select {
		case e.started <- struct{}{}:
		default:
		}
	}
	text, err := e.tok.Decode(prompt)
	if err != nil {
		return nil, "", err
	}
	reply, delay := e.reply(text)
	script := append(e.tok.EncodeOrdinary(reply), e.tok.IMEndID())
	react := strings.Contains(text, "You have access to the following APIs")
	sampler := &model.Sampler{Greedy: true, RepetitionPenalty: 1, Constraint: s.Constraint, Logprobs: s.Logprobs, TopLogprobs: s.TopLogprobs}
	logits := make([]float32, e.tok.Size())
	seen := slices.Clone(prompt)
	var out []int
	var said strings.Builder
	onScript := true
	for {
		if ctx.Err() != nil {
			e.mu.Lock()
			e.cancelled++
			e.mu.Unlock()
			return out, model.StopCancelled, nil
		}
		clear(logits)
		if onScript && len(out) < len(script) {
			logits[script[len(out)]] = 20
		}
		prefs := `"}]{0t`
		if react && !strings.Contains(said.String(), "\n") {
			prefs = "\n"
		}
		for k := range len(prefs) {
			logits[e.tok.EncodeOrdinary(prefs[k : k+1])[0]] += float32(len(prefs) - k)
		}
		id := sampler.NextWith(logits, seen, 0)
		onScript = onScript && len(out) < len(script) && id == script[len(out)]
		if slices.Contains(s.Stop, id) {
			return out, model.StopToken, nil
		}
		if len(out) == s.MaxTokens {
			return out, model.StopLength, nil
		}
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
		}
		out, seen = append(out, id), append(seen, id)
		piece, err := e.tok.TokenBytes(id)
		if err != nil {
			return out, "", err
		}
		said.Write(piece)
		t := model.TokenLogprob{ID: id}
		if s.Logprobs {
			t = sampler.Last
		}
		if err := emit(t); err != nil {
			return out, "", err
		}
	}
}

var (
	tinyOnce sync.Once
	tinyDir  string
	tinyErr  error
)

// tinyModelDir writes a tiny random model (with the demo vocabulary) once per test binary.
func tinyModelDir(t *testing.T) string {
	t.Helper()
	tinyOnce.Do(func() {
		dir, err := os.MkdirTemp("", "qwen-tune-serve-test")
		if err != nil {
			tinyErr = err
			return
		}
		tinyDir = filepath.Join(dir, "tiny")
		o := model.DefaultTiny()
		o.VocabRanks = 4096
		_, tinyErr = model.WriteTiny(tinyDir, o)
	})
	if tinyErr != nil {
		t.Fatal(tinyErr)
	}
	return tinyDir
}

// serveTiny serves the real tiny model (tinyModelDir) as startServer does and returns the
// server's URL; the model is closed when the test ends.
func serveTiny(t *testing.T) string {
	t.Helper()
	op, err := lora.Open(tinyModelDir(t), lora.OpenOptions{NeedTokenizer: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { op.Close() })
	eng := &ModelEngine{ID: "tiny", Model: op.Model, Gen: *op.Gen, Tok: op.Tok, Context: 2048}
	t.Cleanup(func() { eng.Close() })
	_, url := startServer(t, eng, Options{})
	return url
}

func newScripted(t *testing.T) *scripted {
	t.Helper()
	tok, err := tokenizer.Load(tinyModelDir(t))
	if err != nil {
		t.Fatal(err)
	}
	return &scripted{tok: tok, context: 2048}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if tinyDir != "" {
		if err := os.RemoveAll(filepath.Dir(tinyDir)); err != nil {
			fmt.Fprintf(os.Stderr, "removing the test model: %v\n", err)
			code = max(code, 1)
		}
	}
	os.Exit(code)
}
