package lora_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qwen-tune/qwen-tune/examples"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
)

// ExampleRun fine-tunes a tiny random model on the example chats for two steps and lists
// what the run wrote.
func ExampleRun() {
	dir, err := os.MkdirTemp("", "lora-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	base, chats := filepath.Join(dir, "tiny"), filepath.Join(dir, "chat.jsonl")
	tiny := model.DefaultTiny()
	tiny.VocabRanks = 4096
	if _, err := model.WriteTiny(base, tiny); err != nil {
		fmt.Println(err)
		return
	}
	if err := os.WriteFile(chats, examples.Chat, 0o644); err != nil {
		fmt.Println(err)
		return
	}

	o := lora.DefaultOptions()
	o.ModelDir, o.Data, o.Out = base, chats, filepath.Join(dir, "adapter")
	o.Train.Steps, o.Train.LoRA.R = 2, 4
	res, err := lora.Run(context.Background(), o, lora.Hooks{
		OnStart: func(s lora.Start) { fmt.Printf("%d examples, %d LoRA layers\n", s.Stats.Examples, s.Layers) },
		OnStep:  func(s lora.StepResult) error { fmt.Printf("step %d trained %d tokens\n", s.Step, s.Tokens); return nil },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("ran %d of %d steps\n", res.Step, res.Total)
	files, err := os.ReadDir(o.Out)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, f := range files {
		fmt.Println(f.Name())
	}
	// Output:
	// 40 examples, 10 LoRA layers
	// step 0 trained 15 tokens
	// step 1 trained 25 tokens
	// ran 2 of 2 steps
	// adapter_config.json
	// adapter_model.safetensors
	// checkpoint-2
	// metrics.jsonl
	// training_config.json
}
