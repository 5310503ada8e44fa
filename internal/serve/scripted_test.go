package serve

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// scripted is a test double of Engine, used only by these tests: it answers by rules on the
// prompt's text, token by token through the real tokenizer, so the server's streaming, stop
// strings, function calling, queueing and cancellation can be checked exactly.
//
//	a tool result in the prompt ("Observation:" then "Thought:")  -> a ReAct final answer
//	tools offered ("You have access to the following APIs")      -> a ReAct action
//	"long" in the prompt ("slow": 30 ms per token)               -> 400 words
//	"stop test"                                                  -> "alpha beta END gamma delta"
//	otherwise                                                    -> an echo with Markdown
type scripted struct {
	tok       *tokenizer.Tokenizer
	context   int
	mu        sync.Mutex
	prompts   [][]int
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
	return e.prompts[len(e.prompts)-1]
}

func (e *scripted) cancels() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cancelled
}

func (e *scripted) Generate(ctx context.Context, prompt []int, s Sampling, emit func(int) error) ([]int, model.StopReason, error) {
	e.mu.Lock()
	e.prompts = append(e.prompts, prompt)
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
	last := text // a raw completion prompt, or the last user message of a chat
	if i := strings.LastIndex(text, "<|im_start|>user\n"); i >= 0 {
		last = text[i+len("<|im_start|>user\n"):]
		last = last[:max(strings.Index(last, "<|im_end|>"), 0)]
	}
	var reply string
	delay := time.Duration(0)
	switch {
	case strings.HasSuffix(text, "\nThought:") && strings.Contains(text, "\nObservation: "):
		reply = " I now know the final answer\nFinal Answer: It is sunny in Paris, 22 degrees."
	case strings.Contains(text, "You have access to the following APIs"):
		reply = "Thought: I should call the weather API.\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}\nObservation: (the model would invent this)"
	case strings.Contains(last, "slow"), strings.Contains(last, "long"):
		reply = strings.Repeat("word ", 400)
		if strings.Contains(last, "slow") {
			delay = 30 * time.Millisecond
		}
	case strings.Contains(last, "stop test"):
		reply = "alpha beta END gamma delta"
	default:
		reply = fmt.Sprintf("You said: %s\n\n**Hello** from the `scripted` engine.\n\n```go\nfmt.Println(42)\n```", last)
	}
	var out []int
	for _, id := range append(e.tok.EncodeOrdinary(reply), e.tok.IMEndID()) {
		if ctx.Err() != nil {
			e.mu.Lock()
			e.cancelled++
			e.mu.Unlock()
			return out, model.StopCancelled, nil
		}
		for _, stop := range s.Stop {
			if id == stop {
				return out, model.StopToken, nil
			}
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
		out = append(out, id)
		if err := emit(id); err != nil {
			return out, "", err
		}
	}
	return out, model.StopToken, nil
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
