// Command qwen-tune fine-tunes, quantizes and runs Qwen-7B (QWenLMHeadModel) checkpoints.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is runContext with a context that is never cancelled (commands catch Ctrl-C themselves).
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdin, stdout, stderr)
}

// runContext executes one command line under ctx and returns the exit status: 0 on success,
// 1 for an error the user can act on, 130 when Ctrl-C stopped the command, 2 for an
// internal error (a bug, reported without a stack trace unless QWEN_TUNE_DEBUG is set).
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
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "qwen-tune: %v\n", err)
		var stop interrupted
		if errors.As(err, &stop) {
			return 130
		}
		return 1
	}
	return 0
}

// interrupted is the error of a command stopped by Ctrl-C: it exits with status 130, as a
// shell reports a program ended by SIGINT.
type interrupted string

func (e interrupted) Error() string { return string(e) }
