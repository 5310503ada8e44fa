package serve

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// Function is a callable the model may choose, from a request's functions or tools.
type Function struct {
	Name                string          `json:"name"`
	Description         string          `json:"description,omitempty"`
	Parameters          json.RawMessage `json:"parameters,omitempty"`
	NameForModel        string          `json:"name_for_model,omitempty"`
	NameForHuman        string          `json:"name_for_human,omitempty"`
	DescriptionForModel string          `json:"description_for_model,omitempty"`
}

// Qwen's ReAct prompt for function calling (openai_api.py in Qwen's repository).
const toolDesc = "%s: Call this tool to interact with the %s API. What is the %s API useful for? %s Parameters: %s"

const reactInstruction = `Answer the following questions as best you can. You have access to the following APIs:

%s

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [%s]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!`

// The thought Qwen's API puts before a plain assistant reply in a conversation with tools.
var dummyThought = map[bool]string{
	false: "\nThought: I now know the final answer.\nFinal answer: ",
	true:  "\nThought: 我会作答了。\nFinal answer: ",
}

var hanRE = regexp.MustCompile(`[\x{4e00}-\x{9fff}]+`)

// requestError is a 400 (or status, when set) naming the offending parameter; code, when
// set, is OpenAI's error code for it (context_length_exceeded, model_not_found).
type requestError struct {
	status           int
	param, code, msg string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(param, format string, args ...any) error {
	return &requestError{param: param, msg: fmt.Sprintf(format, args...)}
}

func trim(s string) string { return strings.TrimRight(strings.TrimLeft(s, "\n"), " \t\r\n") }

// conversation is a chat request reduced to Qwen's make_context inputs.
type conversation struct {
	system  string
	history []tokenizer.Turn
	query   string
	// continuation, when the conversation ends with a tool result or an assistant message,
	// is the last assistant turn so far ("...\nObservation: result\nThought:", or the text
	// the reply must start with), which the reply continues
	continuation string
}

// buildConversation turns OpenAI messages into a ChatML system message, history and query.
// Without functions a system (or developer) message is the ChatML system prompt (Qwen's
// default otherwise). Consecutive user messages, or assistant messages, are joined with a
// newline (ChatML alternates the two); a last assistant message is a prefix the reply
// continues.
// With functions it follows Qwen's API exactly: the ChatML system stays the default, the
// system text and the ReAct instruction go before the last user question ("...\n\nQuestion:
// q"), assistant function calls become "Thought/Action/Action Input" and function or tool
// results "Observation:" lines appended to the assistant turn.
func buildConversation(msgs []Message, funcs []Function) (*conversation, error) {
	if len(msgs) == 0 {
		return nil, badRequest("messages", "messages is empty: send at least one user message")
	}
	hasUser := false
	for i, m := range msgs {
		switch m.Role {
		case "system", "developer", "user", "assistant", "function", "tool":
		default:
			return nil, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d]: unknown role %q (use system, developer, user, assistant, tool or function)", i, m.Role)
		}
		if m.Role == "user" {
			hasUser = true
		}
	}
	if !hasUser {
		return nil, badRequest("messages", "messages has no user message")
	}
	c := &conversation{system: tokenizer.DefaultSystem}
	var system []string
	first := 0 // the index of msgs[0] in the request
	for len(msgs) > 0 && (msgs[0].Role == "system" || msgs[0].Role == "developer") {
		if s := trim(msgs[0].text()); s != "" {
			system = append(system, s)
		}
		msgs, first = msgs[1:], first+1
	}
	if len(system) > 0 {
		c.system = strings.Join(system, "\n")
	}
	react := "" // Qwen's API: the system text and ReAct instruction, before the last question
	if len(funcs) > 0 {
		if c.system != tokenizer.DefaultSystem {
			react = c.system
		}
		c.system = tokenizer.DefaultSystem
		var descs, names []string
		for _, f := range funcs {
			nm, nh, dm := f.Name, f.Name, f.Description
			if f.NameForModel != "" {
				nm = f.NameForModel
			}
			if f.NameForHuman != "" {
				nh = f.NameForHuman
			}
			if f.DescriptionForModel != "" {
				dm = f.DescriptionForModel
			}
			params := "{}"
			if len(f.Parameters) > 0 {
				params = compactJSON(f.Parameters)
			}
			descs = append(descs, fmt.Sprintf(toolDesc, nm, nh, nh, dm, params))
			names = append(names, nm)
		}
		react = trim(react + "\n\n" + fmt.Sprintf(reactInstruction, strings.Join(descs, "\n\n"), strings.Join(names, ", ")))
	}
	type turn struct{ role, content string }
	var turns []turn
	prefix := "" // a last assistant message, as the reply must start
	for k, m := range msgs {
		i := first + k
		content := trim(m.text())
		last := k == len(msgs)-1
		switch m.Role {
		case "system", "developer":
			return nil, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d]: a %s message must come before the conversation", i, m.Role)
		case "function", "tool":
			if len(turns) == 0 || turns[len(turns)-1].role != "assistant" {
				return nil, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d]: a %s result must follow the assistant message that called it", i, m.Role)
			}
			turns[len(turns)-1].content += "\nObservation: " + content
			if last {
				turns[len(turns)-1].content += "\nThought:"
			}
		case "assistant":
			if len(turns) == 0 {
				return nil, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d]: an assistant message must follow a user message", i)
			}
			zh := hanRE.MatchString(turns[len(turns)-1].content)
			call := m.call()
			switch {
			case call == nil:
				if last {
					prefix = strings.TrimLeft(m.text(), "\n")
				} else if len(funcs) > 0 {
					content = dummyThought[zh] + content
				}
				if turns[len(turns)-1].role == "assistant" {
					content = "\n" + content
				}
			default:
				if content == "" {
					if zh {
						content = fmt.Sprintf("Thought: 我可以使用 %s API。", call.Name)
					} else {
						content = fmt.Sprintf("Thought: I can use %s.", call.Name)
					}
				}
				content = fmt.Sprintf("\n%s\nAction: %s\nAction Input: %s", content, call.Name, call.Arguments)
			}
			if turns[len(turns)-1].role == "user" {
				turns = append(turns, turn{"assistant", trim(content)})
			} else {
				turns[len(turns)-1].content += content
			}
		case "user":
			if content == "" {
				return nil, badRequest(fmt.Sprintf("messages[%d].content", i), "messages[%d]: the user message is empty", i)
			}
			if len(turns) > 0 && turns[len(turns)-1].role == "user" {
				turns[len(turns)-1].content += "\n" + content
				continue
			}
			turns = append(turns, turn{"user", content})
		}
	}
	last := turns[len(turns)-1]
	// after a tool result or an assistant message the model continues its turn
	continuing := last.role != "user"
	if continuing && prefix == "" && !strings.HasSuffix(last.content, "\nThought:") {
		return nil, badRequest("messages", "the last message must be from the user or the assistant, or a tool or function result")
	}
	if !continuing {
		c.query = last.content
		turns = turns[:len(turns)-1]
	}
	if len(turns)%2 != 0 {
		return nil, badRequest("messages", "messages must alternate user and assistant turns")
	}
	for i := 0; i < len(turns); i += 2 {
		u, a := trim(turns[i].content), trim(turns[i+1].content)
		if react != "" && continuing && i == len(turns)-2 {
			u = react + "\n\nQuestion: " + u
			react = ""
		}
		for _, t := range dummyThought {
			t = strings.TrimLeft(t, "\n")
			if strings.HasPrefix(a, t) && strings.Contains(a, "\nAction: ") {
				a = a[len(t):]
			}
		}
		c.history = append(c.history, tokenizer.Turn{User: u, Assistant: a})
	}
	if continuing {
		// the conversation ends with a tool result: the model continues the last assistant
		// turn; Qwen's API feeds it as the history's last answer to complete
		h := c.history[len(c.history)-1]
		c.history = c.history[:len(c.history)-1]
		c.query = h.User
		c.continuation = h.Assistant
		if prefix != "" { // as the client wrote it, trailing blanks included
			c.continuation += prefix[len(strings.TrimRight(prefix, " \t\r\n")):]
		}
	} else if react != "" {
		c.query = react + "\n\nQuestion: " + c.query
	}
	return c, nil
}

// compactJSON is json.dumps(v, ensure_ascii=False) of the JSON in raw: Python's separators
// (", " and ": "), keys in their order, non-ASCII characters as they are.
func compactJSON(raw json.RawMessage) string {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var sb strings.Builder
	if err := writePyJSON(&sb, dec); err != nil {
		return string(raw)
	}
	return sb.String()
}

func writePyJSON(sb *strings.Builder, dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		open, close := string(t), "}"
		if t == '[' {
			close = "]"
		}
		sb.WriteString(open)
		for first := true; dec.More(); first = false {
			if !first {
				sb.WriteString(", ")
			}
			if t == '{' {
				key, err := dec.Token()
				if err != nil {
					return err
				}
				writePyString(sb, key.(string))
				sb.WriteString(": ")
			}
			if err := writePyJSON(sb, dec); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return err
		}
		sb.WriteString(close)
	case string:
		writePyString(sb, t)
	case json.Number:
		sb.WriteString(t.String())
	case bool:
		fmt.Fprint(sb, t)
	case nil:
		sb.WriteString("null")
	}
	return nil
}

func writePyString(sb *strings.Builder, s string) {
	sb.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			sb.WriteString(`\"`)
		case '\\':
			sb.WriteString(`\\`)
		case '\n':
			sb.WriteString(`\n`)
		case '\r':
			sb.WriteString(`\r`)
		case '\t':
			sb.WriteString(`\t`)
		case '\b':
			sb.WriteString(`\b`)
		case '\f':
			sb.WriteString(`\f`)
		default:
			if r < 0x20 {
				fmt.Fprintf(sb, `\u%04x`, r)
			} else {
				sb.WriteRune(r)
			}
		}
	}
	sb.WriteByte('"')
}
