package model

import (
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/golden"
)

// TestMain says how many tests were skipped for missing reference files.
func TestMain(m *testing.M) { golden.Main(m) }
