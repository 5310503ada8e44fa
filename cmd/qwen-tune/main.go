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

// run executes one command line and returns the exit status: 0 on success, 1 for an error
// the user can act on, 2 for an internal error (a bug, reported without a stack trace unless
// QWEN_TUNE_DEBUG is set), and for a run interrupted by a signal after saving its state 128
// + the signal's number (130 for Ctrl-C, 143 for SIGTERM).
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) (status int) {
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
	if err := root.ExecuteContext(context.WithValue(context.Background(), argsKey{}, args)); err != nil {
		fmt.Fprintf(stderr, "qwen-tune: %v\n", err)
		if ie := (*interrupted)(nil); errors.As(err, &ie) {
			return ie.status()
		}
		return 1
	}
	return 0
}

// argsKey holds the command line (without the program name) in the command's context.
type argsKey struct{}
