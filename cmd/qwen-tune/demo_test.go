package main

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/examples"
)

// TestDemo runs the README's first command and then the chat it suggests, as a user would:
// `chat --model ... --adapter ...` with the model's own sampling settings, three-turn
// conversations over questions from the data. At least 9 turns in 10 must be answered with
// the trained reply, later turns of a conversation included.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for about a minute")
	}
	out := filepath.Join(t.TempDir(), "demo")
	o, errs, st := qt(t, "", "demo", "--out", out, "--seed", "1")
	if st != 0 {
		t.Fatalf("demo: %s", errs)
	}
	suggested := regexp.MustCompile(`qwen-tune (chat --model \S+ --adapter \S+)\n`).FindStringSubmatch(o)
	if suggested == nil || !strings.Contains(o, "of 3 replies were the trained ones") {
		t.Fatalf("demo output:\n%s", o)
	}
	qs, err := demoQuestions(examples.Chat)
	if err != nil {
		t.Fatal(err)
	}
	right, turns := 0, 0
	for k := 1; k <= 4; k++ {
		conv := qs[3*k : 3*k+3]
		var stdin strings.Builder
		for _, q := range conv {
			stdin.WriteString(q.Q + "\n")
		}
		args := append(strings.Fields(suggested[1]), "--seed", strconv.Itoa(k))
		replies, errs, st := qt(t, stdin.String(), args...)
		if st != 0 {
			t.Fatalf("chat: %d %s", st, errs)
		}
		// Each reply is one line of stdout; a wrong one may span several, so the trained
		// answers are looked for in order.
		rest := replies
		for i, q := range conv {
			turns++
			if j := strings.Index(rest, q.A); j >= 0 {
				right++
				rest = rest[j+len(q.A):]
			} else {
				t.Logf("conversation %d, turn %d: %q was not answered %q:\n%s", k, i+1, q.Q, q.A, replies)
			}
		}
	}
	t.Logf("%d of %d turns answered with the trained reply", right, turns)
	if right*10 < turns*9 {
		t.Fatalf("only %d of %d turns were answered with the trained reply", right, turns)
	}
}
