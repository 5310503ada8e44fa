// Package lora adds low-rank adapters to a model's projections and reads and writes them in
// PEFT's format. In: a loaded model and a Config (rank, alpha, dropout, target modules) or an
// adapter directory. Out: the same model whose targeted projections compute
// y = W x + (alpha/r) B A dropout(x), with A and B float32 and trainable while every base
// weight stays frozen, and adapter_config.json + adapter_model.safetensors on disk. The base
// may be dense or GPTQ (Q-LoRA: the packed layers stay packed); adapter_config.json records
// which (qwen_tune_base), and an adapter applied to another kind of base says so.
//
// Open loads a model directory (weights, vocabulary, an adapter) to run or train. Run is a
// whole training run: Options (model directory, data, output directory, TrainConfig) in;
// the adapter, resumable checkpoints, training_config.json and metrics.jsonl out, with Hooks
// for progress and for stopping early. A resumed run continues from its latest checkpoint,
// or from step 0 when it has none, after tidying what a killed run left and checking that
// the model, the data's sha256 and the settings are the run's. On an executor that keeps the
// optimizer (model.OptimExecutor, the GPU's) the trained values and AdamW's moments live on
// the device between steps; Trainer.Sync brings them to the host.
package lora
