package serve

// Qwen's ReAct replies seen from the API: the message a whole reply becomes (a call or an
// answer) and what a stream may show while it is generated.

import "strings"

// answer is the assistant message for text: with functions, Qwen's parse_response (an
// "Action:"/"Action Input:" pair becomes a call, its content the thought before it;
// otherwise the text after "Final Answer:").
func (s *Server) answer(text, finish string, p *chatPlan) (*ReplyMessage, string) {
	if len(p.funcs) == 0 {
		return &ReplyMessage{Role: "assistant", Content: &text}, finish
	}
	if p.thought {
		text = "Thought:" + text
	}
	i := strings.Index(text, "\nAction:")
	j := strings.Index(text, "\nAction Input:")
	if i >= 0 && i < j {
		k := strings.Index(text, "\nObservation:")
		if k < j {
			text = strings.TrimRight(text, " \t\r\n") + "\nObservation:"
			k = strings.Index(text, "\nObservation:")
		}
		name := strings.TrimSpace(text[i+len("\nAction:") : j])
		args := strings.TrimSpace(text[j+len("\nAction Input:") : k])
		if name != "" {
			var content *string // null without a thought, as OpenAI's calls have
			if c := callContent(text[:i]); c != "" {
				content = &c
			}
			call := FunctionCall{Name: name, Arguments: args}
			if p.tools {
				return &ReplyMessage{Role: "assistant", Content: content, ToolCalls: []ToolCall{{ID: newID("call_"), Type: "function", Function: call}}}, "tool_calls"
			}
			return &ReplyMessage{Role: "assistant", Content: content, FunctionCall: &call}, "function_call"
		}
	}
	if z := strings.LastIndex(text, "\nFinal Answer: "); z >= 0 {
		text = text[z+len("\nFinal Answer: "):]
	} else if p.thought {
		text = strings.TrimPrefix(text, "Thought:")
	}
	return &ReplyMessage{Role: "assistant", Content: &text}, finish
}

// reactView is what a client may be shown of a ReAct reply while it is generated: a plain
// answer as it comes (holding back what may start "\nAction:"), the answer after "Final
// Answer: ", and the thought before a call once "\nAction:" shows it is one.
type reactView struct {
	text    strings.Builder
	shown   string
	thought bool // the reply is still in its thought (it began "Thought:", or the prompt ends so)
	plain   bool // the reply is not ReAct text
}

// push adds piece and returns the content to show now.
func (v *reactView) push(piece string) string {
	v.text.WriteString(piece)
	vis := v.visible(v.text.String())
	if !strings.HasPrefix(vis, v.shown) {
		return ""
	}
	out := vis[len(v.shown):]
	v.shown = vis
	return out
}

func (v *reactView) visible(text string) string {
	if i := strings.Index(text, "\nAction:"); i >= 0 {
		return callContent(text[:i])
	}
	if !v.plain {
		if z := strings.LastIndex(text, "\nFinal Answer: "); z >= 0 {
			return text[z+len("\nFinal Answer: "):]
		}
		t := strings.TrimLeft(text, " \n")
		if v.thought || strings.HasPrefix(t, "Thought:") || strings.HasPrefix("Thought:", t) {
			v.thought = true
			return ""
		}
		v.plain = true
	}
	return text[:len(text)-heldFor(text, "\nAction:")]
}

// heldFor is the length of the longest end of text that may begin marker.
func heldFor(text, marker string) int {
	for n := min(len(marker)-1, len(text)); n > 0; n-- {
		if strings.HasSuffix(text, marker[:n]) {
			return n
		}
	}
	return 0
}

// callContent is the content of a reply that calls a function, as Qwen's API gives it: the
// text before "\nAction:" after its "Thought: " label, trimmed.
func callContent(text string) string {
	if t := strings.Index(text, "Thought: "); t >= 0 {
		text = text[t+len("Thought: "):]
	}
	return strings.TrimSpace(text)
}
