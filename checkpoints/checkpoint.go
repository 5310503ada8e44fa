package checkpoints

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Index is a Hugging Face `*.safetensors.index.json`: which shard holds each tensor.
type Index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// TotalSize is metadata.total_size, or -1 when absent.
func (ix *Index) TotalSize() int64 {
	if v, ok := ix.Metadata["total_size"].(float64); ok {
		return int64(v)
	}
	return -1
}

// ReadIndex reads and checks an index file: a weight_map of tensor names to bare file names.
func ReadIndex(path string) (*Index, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	var ix Index
	if err := json.Unmarshal(b, &ix); err != nil {
		return nil, fmt.Errorf("checkpoints: %s: not a safetensors index (want {\"metadata\": {...}, \"weight_map\": {name: file}}): %v", path, err)
	}
	if len(ix.WeightMap) == 0 {
		return nil, fmt.Errorf("checkpoints: %s: weight_map is empty or missing", path)
	}
	for name, file := range ix.WeightMap {
		if file == "" || file != filepath.Base(file) || file == "." || file == ".." {
			return nil, fmt.Errorf("checkpoints: %s: tensor %q maps to %q, which is not a file name in the same directory", path, name, file)
		}
	}
	return &ix, nil
}

// Checkpoint is a set of safetensors files read as one: a single file, or shards listed by
// an index. Every tensor name is unique across the set.
type Checkpoint struct {
	Dir   string
	Index *Index // nil for a single file
	Files []*File
	where map[string]*File
}

// OpenDir opens the weights of a model directory: `model.safetensors.index.json` and its
// shards, else `model.safetensors`, else the directory's only `*.safetensors` file.
func OpenDir(dir string) (*Checkpoint, error) {
	indexPath := filepath.Join(dir, "model.safetensors.index.json")
	if _, err := os.Stat(indexPath); err == nil {
		return OpenIndexed(indexPath)
	}
	single := filepath.Join(dir, "model.safetensors")
	if _, err := os.Stat(single); err != nil {
		found, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
		if err != nil { // a directory name with [ or \ that does not parse as a pattern
			return nil, fmt.Errorf("checkpoints: looking for *.safetensors in %s: %w", dir, err)
		}
		switch len(found) {
		case 0:
			if _, err := os.Stat(dir); err != nil {
				return nil, fmt.Errorf("checkpoints: %w", err)
			}
			return nil, fmt.Errorf("checkpoints: %s holds no model.safetensors.index.json and no *.safetensors file: is it a model directory?", dir)
		case 1:
			single = found[0]
		default:
			return nil, fmt.Errorf("checkpoints: %s holds %d safetensors files but no model.safetensors.index.json saying which to load", dir, len(found))
		}
	}
	return OpenFiles(dir, single)
}

// OpenFiles opens safetensors files as one checkpoint; a name in two files is an error.
func OpenFiles(dir string, paths ...string) (*Checkpoint, error) {
	c := &Checkpoint{Dir: dir, where: map[string]*File{}}
	for _, p := range paths {
		f, err := Open(p)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.Files = append(c.Files, f)
		for _, t := range f.Header.Tensors {
			if prev, dup := c.where[t.Name]; dup {
				c.Close()
				return nil, fmt.Errorf("checkpoints: tensor %q is in both %s and %s", t.Name, prev.Path, p)
			}
			c.where[t.Name] = f
		}
	}
	return c, nil
}

// OpenIndexed opens the shards an index names and checks that every indexed tensor is in
// the shard the index says.
func OpenIndexed(indexPath string) (*Checkpoint, error) {
	ix, err := ReadIndex(indexPath)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(indexPath)
	var shards []string
	seen := map[string]bool{}
	for _, f := range ix.WeightMap {
		if !seen[f] {
			seen[f] = true
			shards = append(shards, f)
		}
	}
	sort.Strings(shards)
	paths := make([]string, len(shards))
	for i, s := range shards {
		paths[i] = filepath.Join(dir, s)
		if _, err := os.Stat(paths[i]); err != nil {
			return nil, fmt.Errorf("checkpoints: %s names shard %s, which is missing (%v): download every shard the index lists", indexPath, s, err)
		}
	}
	c, err := OpenFiles(dir, paths...)
	if err != nil {
		return nil, err
	}
	c.Index = ix
	for _, name := range sortedKeys(ix.WeightMap) {
		want := filepath.Join(dir, ix.WeightMap[name])
		got, ok := c.where[name]
		if !ok {
			c.Close()
			return nil, fmt.Errorf("checkpoints: %s: tensor %q is indexed in %s but that shard does not hold it (stale index or wrong shard?)", indexPath, name, ix.WeightMap[name])
		}
		if got.Path != want {
			c.Close()
			return nil, fmt.Errorf("checkpoints: %s: tensor %q is indexed in %s but found in %s", indexPath, name, ix.WeightMap[name], filepath.Base(got.Path))
		}
	}
	return c, nil
}

// Close closes every file of the set.
func (c *Checkpoint) Close() error {
	var first error
	for _, f := range c.Files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Names lists every tensor, sorted.
func (c *Checkpoint) Names() []string { return sortedKeys(c.where) }

// Info describes a tensor and says which file holds it.
func (c *Checkpoint) Info(name string) (TensorInfo, *File, bool) {
	f, ok := c.where[name]
	if !ok {
		return TensorInfo{}, nil, false
	}
	info, _ := f.Header.Lookup(name)
	return info, f, true
}

// Tensor reads a tensor from whichever file holds it.
func (c *Checkpoint) Tensor(name string) (Tensor, error) {
	f, ok := c.where[name]
	if !ok {
		return Tensor{}, fmt.Errorf("checkpoints: %s: no tensor %q", c.Dir, name)
	}
	return f.Tensor(name)
}

// Float32 reads a floating tensor converted to float32, checking its shape.
func (c *Checkpoint) Float32(name string, shape ...int64) ([]float32, error) {
	t, err := c.Tensor(name)
	if err != nil {
		return nil, err
	}
	if shape != nil && !slices.Equal(t.Shape, shape) {
		return nil, fmt.Errorf("checkpoints: %s: tensor %q has shape %s, expected %s", c.Dir, name, shapeString(t.Shape), shapeString(shape))
	}
	return t.Float32()
}

// TotalBytes is the size of all tensor data.
func (c *Checkpoint) TotalBytes() int64 {
	var n int64
	for _, f := range c.Files {
		for _, t := range f.Header.Tensors {
			n += t.End - t.Begin
		}
	}
	return n
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// shardName is the Hugging Face shard file name.
func shardName(base string, i, n int) string {
	return fmt.Sprintf("%s-%05d-of-%05d.safetensors", strings.TrimSuffix(base, ".safetensors"), i, n)
}
