package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

func newChatCmd() *cobra.Command {
	var prompt, system string
	var maxWindow int
	var flags genFlags
	cmd := &cobra.Command{
		Use:   "chat --model DIR [--system S] [--prompt P]",
		Short: "Chat with a model in the terminal (ChatML, streaming)",
		Long: `chat builds Qwen's ChatML prompt from the system message, the conversation so far
(as many recent turns as fit in --max-window tokens) and your message, and streams the reply
until <|im_end|>. Text you type is always ordinary text: typing <|im_end|> cannot end a turn.

Commands at the prompt: :clear forgets the conversation, :history shows it, :exit (or
Ctrl-D) leaves. Ctrl-C stops the reply being written and keeps the session.
With --prompt, chat answers that one message and exits (for scripts).

Sampling follows the model's generation_config.json unless a flag overrides it.`,
		Example: `  qwen-tune chat --model tiny-qwen
  qwen-tune chat --model DIR --prompt 'Write a haiku about Go' --greedy`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			in, g, seed, err := flags.open(cmd, true)
			if err != nil {
				return err
			}
			defer in.close()
			c := newChat(in, g, seed, system, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if cmd.Flags().Changed("max-window") {
				c.maxWindow = maxWindow
			}
			defer c.session.Close()
			stopSignals := c.handleInterrupts()
			defer stopSignals()
			if cmd.Flags().Changed("prompt") {
				return c.turn(prompt)
			}
			return c.loop(cmd.InOrStdin())
		},
	}
	f := cmd.Flags()
	f.StringVar(&flags.model, "model", "", "model directory (config.json, safetensors, qwen.tiktoken)")
	f.StringVar(&system, "system", tokenizer.DefaultSystem, "system message")
	f.StringVar(&prompt, "prompt", "", "answer this one message and exit")
	f.IntVar(&maxWindow, "max-window", 0, "most prompt tokens kept from the conversation (default: generation_config.json max_window_size)")
	flags.register(f)
	return cmd
}

// newChat starts a conversation with in under the generation settings g: the chat
// command's session, and the demo's.
func newChat(in *inference, g checkpoints.GenerationConfig, seed uint64, system string, out, errw io.Writer) *chat {
	c := &chat{in: in, system: system, maxWindow: in.gen.MaxWindowSize, maxNew: g.MaxNewTokens, out: out, errw: errw}
	c.sampler = model.NewSampler(g, seed)
	c.sampler.Limit = in.tok.Size()
	c.session = in.m.NewSession(256)
	return c
}

type chat struct {
	in        *inference
	system    string
	history   []tokenizer.Turn
	maxWindow int
	maxNew    int
	sampler   *model.Sampler
	session   *model.Session
	out, errw io.Writer

	mu     sync.Mutex
	cancel context.CancelFunc // the reply being written, if any
}

// handleInterrupts makes Ctrl-C stop the current reply instead of the program.
func (c *chat) handleInterrupts() func() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-sig:
				c.mu.Lock()
				if c.cancel != nil {
					c.cancel()
				} else {
					fmt.Fprintln(c.errw, "\n(type :exit or press Ctrl-D to leave)")
				}
				c.mu.Unlock()
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(sig); close(done) }
}

func (c *chat) loop(stdin io.Reader) error {
	interactive := false
	if f, ok := stdin.(*os.File); ok {
		interactive = isTerminal(f)
	}
	if interactive {
		fmt.Fprintln(c.errw, "Chatting with the model. :clear forgets, :history shows the conversation, :exit or Ctrl-D leaves, Ctrl-C stops a reply.")
	}
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for {
		fmt.Fprint(c.errw, "\nuser> ")
		if !sc.Scan() {
			fmt.Fprintln(c.errw)
			return sc.Err()
		}
		line := strings.TrimSpace(sc.Text())
		switch line {
		case "":
			continue
		case ":exit", ":quit":
			return nil
		case ":clear":
			c.history = nil
			fmt.Fprintln(c.errw, "(conversation cleared)")
			continue
		case ":history":
			c.showHistory()
			continue
		}
		if err := c.turn(line); err != nil {
			fmt.Fprintf(c.errw, "qwen-tune: %v\n", err)
		}
	}
}

func (c *chat) showHistory() {
	if len(c.history) == 0 {
		fmt.Fprintln(c.out, "(no conversation yet)")
		return
	}
	fmt.Fprintf(c.out, "system: %s\n", c.system)
	for _, t := range c.history {
		fmt.Fprintf(c.out, "user: %s\nassistant: %s\n", t.User, t.Assistant)
	}
}

// turn answers one message, streaming the reply to out, and records it in the history.
func (c *chat) turn(query string) error {
	tok := c.in.tok
	ids, kept := tok.ChatPrompt(c.system, c.history, query, c.maxWindow)
	if kept < len(c.history) {
		fmt.Fprintf(c.errw, "(the %d oldest turns no longer fit in %d tokens and were left out)\n", len(c.history)-kept, c.maxWindow)
	}
	if n := len(ids) + c.maxNew; n > model.MaxPositions {
		return fmt.Errorf("the prompt (%d tokens) plus %d new tokens exceeds the %d positions Qwen-7B supports; shorten the message or lower --max-window", len(ids), c.maxNew, model.MaxPositions)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.cancel = nil
		c.mu.Unlock()
		cancel()
	}()
	dec := tok.NewStreamDecoder()
	stops := append(tok.StopIDs(), c.in.gen.EOSTokenID)
	reply, reason, err := c.session.Generate(ctx, ids, model.GenerateOptions{MaxNewTokens: c.maxNew, Stop: stops, Sampler: c.sampler}, func(id int) error {
		text, err := dec.Add(id)
		if err == nil {
			_, err = io.WriteString(c.out, text)
		}
		return err
	})
	if err != nil {
		return err
	}
	if _, err := io.WriteString(c.out, dec.Flush()+"\n"); err != nil {
		return err
	}
	switch reason {
	case model.StopCancelled:
		fmt.Fprintln(c.errw, "(reply stopped)")
	case model.StopLength:
		fmt.Fprintf(c.errw, "(reply cut at %d tokens)\n", c.maxNew)
	}
	text, err := tok.Decode(reply)
	if err != nil {
		return err
	}
	c.history = append(c.history, tokenizer.Turn{User: query, Assistant: text})
	return nil
}
