package main

import (
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=..."; otherwise the module
// version is used.
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "0.1.0-dev"
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "qwen-tune",
		Short: "Fine-tune, quantize and chat with Qwen-7B, in one Go binary",
		Long: `qwen-tune works with Qwen-7B and Qwen-7B-Chat (QWenLMHeadModel) checkpoints in the
Hugging Face layout: safetensors weights, config.json, generation_config.json and the
qwen.tiktoken vocabulary, all read from a local directory (nothing is downloaded).

Start with 'qwen-tune demo': it writes a tiny random model, fine-tunes it with LoRA on the
example chats and holds a conversation with it, in about a minute on a CPU. 'qwen-tune init --tiny
--out DIR' writes such a model for any command to use.

The main job: 'lora' fine-tunes (PEFT adapters), 'merge' folds an adapter in, 'quantize'
makes a GPTQ Int4 model, and 'chat', 'generate' and 'eval' run any of them.`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newInspectCmd(), newTokenizeCmd(), newInitCmd(), newGenerateCmd(), newChatCmd(), newEvalCmd(), newBenchCmd(), newLoraCmd(), newDemoCmd(), newMergeCmd(), newDataCmd(), newQuantizeCmd(), newSelftestCmd(), newServeCmd())
	return root
}
