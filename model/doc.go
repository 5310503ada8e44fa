// Package model is the Qwen-7B model definition. It also writes tiny random models of the
// same architecture and file layout (WriteTiny), the embedded default that lets every command
// run on a machine without the real weights.
package model
