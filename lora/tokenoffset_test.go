package lora

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTokenOffsetChecksTheIndices: trainable_token_indices must be consecutive ids from 0 up,
// the same for wte and lm_head; a malformed file is named.
func TestTokenOffsetChecksTheIndices(t *testing.T) {
	for body, want := range map[string]string{
		`{"trainable_token_indices": {"wte": [5, 6, 7], "lm_head": [5, 6, 7]}}`: "",
		`{"trainable_token_indices": {"wte": [5, 6, 7]}}`:                       "",
		`{"trainable_token_indices": {"wte": [5, 6, 7], "lm_head": [5, 6]}}`:    "other ids for lm_head",
		`{"trainable_token_indices": {"wte": [5, 7]}}`:                          "consecutive ids",
		`{"trainable_token_indices": {"wte": [-1, 0]}}`:                         "consecutive ids",
		`{"trainable_token_indices": {"wte": "5"}}`:                             "adapter_config.json: trainable_token_indices",
		`{}`: "no trainable_token_indices",
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		offset, count, err := tokenOffset(dir)
		switch {
		case want == "" && (err != nil || offset != 5 || count != 3):
			t.Errorf("%s: offset %d, count %d, %v; want 5, 3", body, offset, count, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v, want an error with %q", body, err, want)
		}
	}
}
