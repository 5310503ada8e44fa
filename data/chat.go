package data

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

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
// The file must be UTF-8 (a byte-order mark at its start is accepted); an invalid byte is
// an error naming the line and byte offset, never replaced. A conversation must start with
// a user message and alternate user, assistant, with at least one assistant turn.
// Malformed examples stop the load (BadError) or are skipped and listed (BadSkip).
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
	if err := checkEncoding(b, file); err != nil {
		return nil, nil, err
	}
	body := bytes.TrimPrefix(b, bom)
	head := int64(len(b) - len(body)) // the byte-order mark, if any
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '[' {
		if err := parseList(b, head, file, vocab, add); err != nil {
			return nil, nil, err
		}
	} else {
		err := scanLines(bytes.NewReader(b), file, func(line int, offset int64, text []byte) error {
			if len(text) == 0 {
				return nil // blank lines between JSONL records are harmless in a training set
			}
			src := fmt.Sprintf("%s:%d", file, line)
			if err := checkText(text, offset); err != nil {
				return add(Example{}, &LineError{file, line, err.Error()})
			}
			ex, err := parseExample(text, src, vocab)
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

// parseList reads a JSON list of examples from b (starting at offset head, past a
// byte-order mark), naming each item by its index and the line it starts on.
func parseList(b []byte, head int64, file string, vocab int, add func(Example, error) error) error {
	body := b[head:]
	if err := json.Unmarshal(body, new([]json.RawMessage)); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) && se.Offset <= int64(len(body)) {
			at := head + se.Offset
			line := lineAt(b, at)
			if i := firstInvalid(b); i >= 0 && i <= at {
				return &LineError{file, lineAt(b, i), checkUTF8(b, 0).Error()}
			}
			return &LineError{file, line, "not a JSON list of conversations: " + err.Error()}
		}
		return &LineError{file, 1, "not a JSON list of conversations: " + err.Error()}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil { // the '[' just checked
		return fmt.Errorf("data: %s: %w", file, err)
	}
	for i := 0; dec.More(); i++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("data: %s: item %d: %w", file, i, err)
		}
		start := head + dec.InputOffset() - int64(len(raw))
		line := lineAt(b, start)
		src := fmt.Sprintf("%s:%d (item %d)", file, line, i)
		var err error
		ex := Example{}
		if err = checkText(raw, start); err == nil {
			ex, err = parseExample(raw, src, vocab)
		}
		if err != nil {
			if bad := firstInvalid(raw); bad >= 0 {
				line = lineAt(b, start+int64(bad))
			}
			err = &LineError{file, line, fmt.Sprintf("item %d: %v", i, err)}
		}
		if err := add(ex, err); err != nil {
			return err
		}
	}
	return nil
}

// lineAt is the line (from 1) holding byte offset of b.
func lineAt(b []byte, offset int64) int {
	return bytes.Count(b[:min(offset, int64(len(b)))], []byte("\n")) + 1
}

// firstInvalid is the offset of the first byte of b that is not UTF-8, or -1.
func firstInvalid(b []byte) int64 {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return int64(i)
		}
		i += n
	}
	return -1
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

// check validates the order of the turns: user first, then alternating. Qwen's script drops
// a leading assistant message silently; here it is an error, so no data goes missing
// unannounced.
func (c *Conversation) check(key string) error {
	if len(c.Messages) == 0 {
		return fmt.Errorf("%s: no user message", key)
	}
	if c.Messages[0].Role == "assistant" {
		return fmt.Errorf("%s: the conversation starts with an assistant turn; it must start with the user's message (add the user turn it answers, or remove it)", key)
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

// emptyReplies counts the assistant turns with no text.
func (c *Conversation) emptyReplies() int {
	n := 0
	for _, m := range c.Messages {
		if m.Role == "assistant" && strings.TrimSpace(m.Content) == "" {
			n++
		}
	}
	return n
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

// Set parses a --mask value (ParseMask); with String and Type it makes a Mask a command-line
// flag.
func (m *Mask) Set(s string) error {
	v, err := ParseMask(s)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// String is the mask's name, as Set takes it.
func (m *Mask) String() string { return string(*m) }

// Type is how flag usage names the value.
func (m *Mask) Type() string { return "string" }

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
