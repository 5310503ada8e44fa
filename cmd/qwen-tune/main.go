// Command qwen-tune fine-tunes, quantizes and runs Qwen-7B (QWenLMHeadModel) checkpoints.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is runContext with a context that is never cancelled (commands catch their signals
// themselves).
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdin, stdout, stderr)
}

// runContext executes one command line under ctx and returns the exit status: 0 on success,
// 1 for an error the user can act on, 2 for an internal error (a bug, reported without a
// stack trace unless QWEN_TUNE_DEBUG is set), and for a command stopped by a signal 128 + the
// signal's number (130 for Ctrl-C, 143 for SIGTERM; a `lora` run saves its state first).
func runContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) (status int) {
	defer func() {
		if r := recover(); r != nil {
			if os.Getenv("QWEN_TUNE_DEBUG") != "" {
				panic(r)
			}
			fmt.Fprintf(stderr, "qwen-tune: internal error: %v\n(set QWEN_TUNE_DEBUG=1 for a stack trace, and please report it)\n", r)
			status = 2
		}
	}()
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(context.WithValue(ctx, argsKey{}, args)); err != nil {
		fmt.Fprintf(stderr, "qwen-tune: %v\n", err)
		if ie := (*interrupted)(nil); errors.As(err, &ie) {
			return ie.status()
		}
		if errors.As(err, new(stopped)) {
			return 130
		}
		return 1
	}
	return 0
}

// argsKey holds the command line (without the program name) in the command's context.
type argsKey struct{}

// interruptible is ctx, cancelled by Ctrl-C (SIGINT): eval, generate and quantize stop early
// with it (those without a result yet return stopped).
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt)
}

// stopped is the error of a command (eval, quantize) that Ctrl-C stopped before it had a
// result: it exits with status 130, as a shell reports a program ended by SIGINT.
type stopped string

func (e stopped) Error() string { return string(e) }
