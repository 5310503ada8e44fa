package tokenizer

// ChatML prompts as Qwen's make_context builds them:
//
//	<|im_start|>system\n{system}<|im_end|>
//	\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{r}<|im_end|>   (each history turn)
//	\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n
//
// Roles and contents are encoded with no special tokens allowed, so a user who types
// "<|im_end|>" gets those characters, not a new turn.

// DefaultSystem is Qwen's default system prompt.
const DefaultSystem = "You are a helpful assistant."

// DefaultMaxWindow is Qwen-7B-Chat's max_window_size.
const DefaultMaxWindow = 6144

// Turn is one exchange of a conversation's history.
type Turn struct {
	User, Assistant string
}

// Message encodes one ChatML message: <|im_start|>role\ncontent<|im_end|>.
func (t *Tokenizer) Message(role, content string) []int {
	ids := []int{t.IMStartID()}
	ids = append(ids, t.EncodeOrdinary(role)...)
	ids = append(ids, t.newline()...)
	ids = append(ids, t.EncodeOrdinary(content)...)
	return append(ids, t.IMEndID())
}

func (t *Tokenizer) newline() []int { return t.EncodeOrdinary("\n") }

// ChatPrompt builds the prompt for query after a system message and history (oldest first).
// History turns are added newest first while the prompt stays under maxWindow tokens (as
// Qwen counts: system, the kept turns and the candidate turn, strictly below maxWindow);
// the query always goes in. It returns the ids and how many of the newest turns were kept.
func (t *Tokenizer) ChatPrompt(system string, history []Turn, query string, maxWindow int) ([]int, int) {
	nl := t.newline()
	systemIDs := t.Message("system", system)
	var context []int
	kept := 0
	for i := len(history) - 1; i >= 0; i-- {
		var turn []int
		turn = append(turn, nl...)
		turn = append(turn, t.Message("user", history[i].User)...)
		turn = append(turn, nl...)
		turn = append(turn, t.Message("assistant", history[i].Assistant)...)
		if len(systemIDs)+len(turn)+len(context) >= maxWindow {
			break
		}
		context = append(turn, context...)
		kept++
	}
	ids := append(systemIDs, context...)
	ids = append(ids, nl...)
	ids = append(ids, t.Message("user", query)...)
	ids = append(ids, nl...)
	ids = append(ids, t.IMStartID())
	ids = append(ids, t.EncodeOrdinary("assistant")...)
	return append(ids, nl...), kept
}

// StopIDs are the tokens that end a chat reply: <|im_end|>, <|im_start|> and <|endoftext|>.
func (t *Tokenizer) StopIDs() []int { return []int{t.IMEndID(), t.IMStartID(), t.EndOfTextID()} }
