package data

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// Message is one turn of a conversation.
type Message struct {
	Role    string // "user" or "assistant"
	Content string
}

// Conversation is one training example: a system message and alternating user/assistant
// turns starting with the user. Source names its file and line for errors.
type Conversation struct {
	ID       string
	System   string
	Messages []Message
	Source   string
}

// Example is one dataset entry: a conversation, or a pre-tokenized record.
type Example struct {
	Conv   *Conversation
	Tokens *Record
	Source string
}

// OnBad says what to do with a malformed example.
type OnBad string

const (
	BadError OnBad = "error" // stop with an error naming the file and line
	BadSkip  OnBad = "skip"  // leave it out and report it
)

// Load reads a training dataset in any of the supported formats, chosen by content:
//   - Qwen's conversations: a JSON list, or JSONL, of {"id", "conversations": [{"from", "value"}]}
//   - OpenAI-style JSONL: {"messages": [{"role": "system"|"user"|"assistant", "content"}]}
//   - pre-tokenized JSONL: {"input_ids": [...], "labels": [...]}
//
// A conversation's first message is dropped when it is not from the user (as Qwen does);
// after that, roles must alternate user, assistant, and at least one assistant turn must
// exist. Malformed examples stop the load (BadError) or are skipped and listed (BadSkip).
func Load(path string, onBad OnBad, vocab int) ([]Example, []error, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("data: %w", err)
	}
	return Parse(b, path, onBad, vocab)
}

// Parse is Load on bytes; file names the source in errors.
func Parse(b []byte, file string, onBad OnBad, vocab int) ([]Example, []error, error) {
	var out []Example
	var skipped []error
	add := func(ex Example, err error) error {
		if err == nil {
			out = append(out, ex)
			return nil
		}
		if onBad == BadSkip {
			skipped = append(skipped, err)
			return nil
		}
		return err
	}
	trimmed := bytes.TrimLeft(b, " \t\r\n\ufeff")
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var list []json.RawMessage
		if err := json.Unmarshal(trimmed, &list); err != nil {
			return nil, nil, &LineError{file, lineOf(b, err), "not a JSON list of conversations: " + err.Error()}
		}
		for i, raw := range list {
			src := fmt.Sprintf("%s: item %d", file, i)
			ex, err := parseExample(raw, src, vocab)
			if err != nil {
				err = fmt.Errorf("data: %s: %v", src, err)
			}
			if err := add(ex, err); err != nil {
				return nil, nil, err
			}
		}
	} else {
		err := scanLines(bytes.NewReader(b), file, func(line int, text []byte) error {
			if len(text) == 0 {
				return nil // blank lines between JSONL records are harmless in a training set
			}
			ex, err := parseExample(text, fmt.Sprintf("%s:%d", file, line), vocab)
			if err != nil {
				err = &LineError{file, line, err.Error()}
			}
			return add(ex, err)
		})
		if err != nil {
			return nil, nil, err
		}
	}
	if len(out) == 0 {
		if len(skipped) > 0 {
			return nil, skipped, fmt.Errorf("data: %s: all %d examples are malformed; the first: %v", file, len(skipped), skipped[0])
		}
		return nil, nil, fmt.Errorf("data: %s: no examples (expected conversations JSON, messages JSONL or input_ids JSONL)", file)
	}
	return out, skipped, nil
}

// lineOf finds the line of a JSON syntax error.
func lineOf(b []byte, err error) int {
	var se *json.SyntaxError
	if errors.As(err, &se) && se.Offset <= int64(len(b)) {
		return bytes.Count(b[:se.Offset], []byte("\n")) + 1
	}
	return 1
}

func parseExample(raw []byte, src string, vocab int) (Example, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return Example{}, fmt.Errorf("not a JSON object: %v", err)
	}
	switch {
	case keys["conversations"] != nil:
		c, err := parseQwen(raw)
		if c != nil {
			c.Source = src
		}
		return Example{Conv: c, Source: src}, err
	case keys["messages"] != nil:
		c, err := parseMessages(raw)
		if c != nil {
			c.Source = src
		}
		return Example{Conv: c, Source: src}, err
	case keys["input_ids"] != nil:
		r, err := parseRecord(raw, vocab)
		return Example{Tokens: &r, Source: src}, err
	}
	return Example{}, fmt.Errorf("expected a \"conversations\", \"messages\" or \"input_ids\" key")
}

func parseQwen(raw []byte) (*Conversation, error) {
	var q struct {
		ID            any `json:"id"`
		Conversations []struct {
			From  *string `json:"from"`
			Value *string `json:"value"`
		} `json:"conversations"`
	}
	if err := json.Unmarshal(raw, &q); err != nil {
		return nil, fmt.Errorf("conversations: %v", err)
	}
	c := &Conversation{System: tokenizer.DefaultSystem}
	if q.ID != nil {
		c.ID = fmt.Sprint(q.ID)
	}
	for i, m := range q.Conversations {
		if m.From == nil || m.Value == nil {
			return nil, fmt.Errorf("conversations[%d] needs \"from\" and \"value\"", i)
		}
		if *m.From != "user" && *m.From != "assistant" {
			return nil, fmt.Errorf("conversations[%d]: from %q; expected \"user\" or \"assistant\"", i, *m.From)
		}
		c.Messages = append(c.Messages, Message{Role: *m.From, Content: *m.Value})
	}
	return c, c.check("conversations")
}

func parseMessages(raw []byte) (*Conversation, error) {
	var o struct {
		Messages []struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, fmt.Errorf("messages: %v", err)
	}
	c := &Conversation{System: tokenizer.DefaultSystem}
	for i, m := range o.Messages {
		if m.Role == nil || m.Content == nil {
			return nil, fmt.Errorf("messages[%d] needs \"role\" and \"content\" (a string)", i)
		}
		switch *m.Role {
		case "system":
			if i != 0 {
				return nil, fmt.Errorf("messages[%d]: a system message must come first", i)
			}
			c.System = *m.Content
		case "user", "assistant":
			c.Messages = append(c.Messages, Message{Role: *m.Role, Content: *m.Content})
		default:
			return nil, fmt.Errorf("messages[%d]: role %q; expected system, user or assistant", i, *m.Role)
		}
	}
	return c, c.check("messages")
}

// check drops a leading non-user message (as Qwen's script does) and validates the order.
func (c *Conversation) check(key string) error {
	if len(c.Messages) > 0 && c.Messages[0].Role != "user" {
		c.Messages = c.Messages[1:]
	}
	if len(c.Messages) == 0 {
		return fmt.Errorf("%s: no user message", key)
	}
	assistant := false
	for i, m := range c.Messages {
		want := "user"
		if i%2 == 1 {
			want = "assistant"
		}
		if m.Role != want {
			return fmt.Errorf("%s: roles out of order: message %d is from %s, expected %s (turns alternate user, assistant)", key, i+1, m.Role, want)
		}
		assistant = assistant || m.Role == "assistant"
	}
	if !assistant {
		return fmt.Errorf("%s: no assistant turn, so nothing to learn", key)
	}
	return nil
}

// Mask chooses which tokens are trained.
type Mask string

const (
	// MaskQwen is Qwen's recipe: <|im_start|>, <|im_end|> and "\n" of every turn, plus the
	// assistant contents.
	MaskQwen Mask = "qwen"
	// MaskAssistant trains only assistant contents, their <|im_end|> and the "\n" after it.
	MaskAssistant Mask = "assistant"
)

// ParseMask reads a --mask value.
func ParseMask(s string) (Mask, error) {
	switch Mask(s) {
	case MaskQwen, MaskAssistant:
		return Mask(s), nil
	}
	return "", fmt.Errorf("data: mask %q: expected qwen or assistant", s)
}

// Render turns a conversation into Qwen's training sequence:
//
//	<|im_start|>system\n{system}<|im_end|>\n <|im_start|>user\n{q}<|im_end|>\n <|im_start|>assistant\n{a}<|im_end|>\n ...
//
// with labels equal to the ids where trained and autograd.IgnoreIndex elsewhere. Contents are
// encoded as ordinary text: special-token text typed in a message stays text (Qwen's own
// script would parse it as special tokens).
func Render(tok *tokenizer.Tokenizer, c *Conversation, mask Mask) (ids, labels []int) {
	nl := tok.EncodeOrdinary("\n")
	turn := func(role, content string, trainContent bool) {
		head := append([]int{tok.IMStartID()}, tok.EncodeOrdinary(role)...)
		head = append(head, nl...)
		body := tok.EncodeOrdinary(content)
		tail := append([]int{tok.IMEndID()}, nl...)
		frame := mask == MaskQwen // Qwen trains the specials and newline of every turn
		for i, id := range head {
			ids = append(ids, id)
			labels = append(labels, pick(id, frame && i == 0))
		}
		for _, id := range body {
			ids = append(ids, id)
			labels = append(labels, pick(id, trainContent))
		}
		for _, id := range tail {
			ids = append(ids, id)
			labels = append(labels, pick(id, frame || trainContent))
		}
	}
	turn("system", c.System, false)
	for _, m := range c.Messages {
		turn(m.Role, m.Content, m.Role == "assistant")
	}
	return ids, labels
}

func pick(id int, train bool) int {
	if train {
		return id
	}
	return autograd.IgnoreIndex
}

// Highlight writes a rendered sequence with trained tokens marked: [[...]] around trained
// runs, or ANSI colour when color is set.
func Highlight(w io.Writer, tok *tokenizer.Tokenizer, ids, labels []int, color bool) error {
	var sb strings.Builder
	open, close := "[[", "]]"
	if color {
		open, close = "\x1b[1;32m", "\x1b[0m"
	}
	trained := false
	for i, id := range ids {
		t := labels[i] != autograd.IgnoreIndex
		if t != trained {
			if t {
				sb.WriteString(open)
			} else {
				sb.WriteString(close)
			}
			trained = t
		}
		b, err := tok.TokenBytes(id)
		if err != nil {
			return err
		}
		sb.Write(b)
	}
	if trained {
		sb.WriteString(close)
	}
	_, err := io.WriteString(w, tokenizer.DecodeUTF8([]byte(sb.String()))+"\n")
	return err
}
