package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/internal/serve"
)

func newServeCmd() *cobra.Command {
	var (
		modelDir, adapterDir, addr, apiKey, device, modelID string
		opts                                                serve.Options
		contextLen                                          int
		shutdown                                            time.Duration
		quiet                                               bool
	)
	cmd := &cobra.Command{
		Use:   "serve --model DIR [--addr 127.0.0.1:8000] [--api-key KEY]",
		Short: "Serve an OpenAI-compatible API and a web chat page",
		Long: `serve answers OpenAI's chat and completions API for one model, and serves a chat page at
http://ADDR/ (streaming replies, history, system prompt and sampling settings, a stop button).

  POST /v1/chat/completions  messages, temperature, top_p, max_tokens, stop, seed, stream
                             (with stream_options.include_usage), presence_penalty,
                             frequency_penalty, logprobs and top_logprobs, tools or functions
                             (Qwen's ReAct prompt; replies carry tool_calls or function_call)
                             with tool_choice, response_format (json_object, json_schema) by
                             constrained decoding
  POST /v1/completions       a raw prompt, for base models
  GET  /v1/models, /v1/models/{id}, /health

Generations run one at a time; --queue requests are admitted at once (one generating, the
others sending their bodies or waiting), more are answered 429 before their bodies are read.
A body must arrive within --read-timeout (else 408), an idle connection closes after
--idle-timeout, and a client that disconnects cancels its generation and frees its slot. Text in messages is always ordinary text: typing
<|im_end|> cannot start a new turn. It listens on loopback unless --addr says otherwise; with
--api-key (or QWEN_TUNE_API_KEY) every /v1 request needs "Authorization: Bearer KEY".
SIGTERM or Ctrl-C stops accepting requests and lets running ones finish (up to
--shutdown-timeout), then ends them: a stream gets its finish_reason, an error event and
[DONE]. A second SIGTERM or Ctrl-C stops at once.`,
		Example: `  qwen-tune serve --model ./Qwen-7B-Chat
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model": "Qwen-7B-Chat", "messages": [{"role": "user", "content": "Hello"}]}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if apiKey == "" {
				apiKey = os.Getenv("QWEN_TUNE_API_KEY")
			}
			in, err := openModel(cmd, modelDir, openOptions{Adapter: adapterDir, NeedTokenizer: true, OnDevice: true, Device: device})
			if err != nil {
				return err
			}
			defer in.close()
			if modelID == "" {
				modelID = filepath.Base(filepath.Clean(modelDir))
			}
			if contextLen <= 0 {
				contextLen = in.m.Config.SeqLength
			}
			eng := &serve.ModelEngine{ID: modelID, Model: in.m, Gen: *in.gen, Tok: in.tok, Context: contextLen}
			defer eng.Close()
			if !cmd.Flags().Changed("max-tokens") {
				opts.MaxTokens = in.gen.MaxNewTokens
			}
			opts.APIKey = apiKey
			if !quiet {
				errw := cmd.ErrOrStderr()
				opts.Logf = func(format string, a ...any) { fmt.Fprintf(errw, time.Now().Format("15:04:05 ")+format+"\n", a...) }
			}
			srv := serve.New(eng, opts)
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("--addr %s: %w", addr, err)
			}
			host, _, err := net.SplitHostPort(ln.Addr().String())
			if err != nil {
				return fmt.Errorf("--addr %s: %w", addr, err)
			}
			if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && apiKey == "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: listening on %s without --api-key: anyone who can reach it can use the model\n", ln.Addr())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "serving %s at http://%s/ (API: http://%s/v1)\n", modelID, ln.Addr(), ln.Addr())
			// the first SIGINT or SIGTERM stops gracefully, the second at once
			signals := make(chan os.Signal, 2)
			signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(signals)
			stopCtx, stop := context.WithCancel(cmd.Context())
			defer stop()
			killCtx, kill := context.WithCancel(cmd.Context())
			defer kill()
			go func() {
				for n := 0; ; n++ {
					select {
					case <-signals:
						if n > 0 {
							kill()
							return
						}
						stop()
					case <-killCtx.Done():
						return
					}
				}
			}()
			return srv.Run(stopCtx, killCtx, ln, shutdown, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "model directory (config.json, safetensors, qwen.tiktoken)")
	f.StringVar(&adapterDir, "adapter", "", "PEFT LoRA adapter applied on top of the model")
	f.StringVar(&addr, "addr", "127.0.0.1:8000", "address to listen on")
	f.StringVar(&apiKey, "api-key", "", "require this bearer key on /v1 requests (default: $QWEN_TUNE_API_KEY)")
	f.StringVar(&modelID, "model-id", "", "the model's name in the API (default: the directory's name)")
	f.IntVar(&opts.Queue, "queue", serve.DefaultQueue, "requests admitted at once (one generating, the rest sending or waiting); more get 429")
	f.DurationVar(&opts.ReadTimeout, "read-timeout", serve.DefaultReadTimeout, "longest time a client may take to send a request body (then 408)")
	f.DurationVar(&opts.IdleTimeout, "idle-timeout", serve.DefaultIdleTimeout, "close kept-alive connections idle this long")
	f.StringSliceVar(&opts.Aliases, "alias", nil, "other model names requests may use (repeatable); other names get 404")
	f.Int64Var(&opts.MaxBody, "max-body", 1<<20, "largest request body in bytes")
	f.IntVar(&opts.MaxTokens, "max-tokens", 0, "reply length when a request gives no max_tokens (default: generation_config.json)")
	f.IntVar(&contextLen, "context", 0, "most tokens of prompt plus reply (default: the config's seq_length)")
	f.DurationVar(&shutdown, "shutdown-timeout", 30*time.Second, "how long running requests may finish after SIGTERM")
	f.BoolVar(&quiet, "quiet", false, "do not log requests")
	registerDevice(f, &device)
	return cmd
}
