package checkpoints

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// WriteAtomic writes a file through a temporary file in the same directory, synced and then
// renamed over path (and the directory synced), so a crash or an error never leaves a
// half-written file where a good one was. The temporary file is removed on an error; one a
// killed process left has a name IsTemp recognises.
func WriteAtomic(path string, write func(w io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("checkpoints: creating a temporary file next to %s: %w", path, err)
	}
	defer func() {
		if err == nil {
			return
		}
		// The write already failed: say so, and also what was left behind. Close after a
		// successful Close (a failed chmod or rename) reports only os.ErrClosed.
		if cerr := tmp.Close(); cerr != nil && !errors.Is(cerr, os.ErrClosed) {
			err = errors.Join(err, cerr)
		}
		if rerr := os.Remove(tmp.Name()); rerr != nil {
			err = errors.Join(err, fmt.Errorf("checkpoints: removing the temporary file: %w", rerr))
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err = write(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return fmt.Errorf("checkpoints: writing %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("checkpoints: writing %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("checkpoints: writing %s: %w", path, err)
	}
	if err = os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("checkpoints: %w", err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("checkpoints: %w", err)
	}
	return SyncDir(dir)
}

// WriteJSON writes v as indented JSON, atomically.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("checkpoints: encoding %s: %w", path, err)
	}
	return WriteBytes(path, append(b, '\n'))
}

// WriteBytes writes b to path atomically (WriteAtomic).
func WriteBytes(path string, b []byte) error {
	return WriteAtomic(path, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// orderTensors sorts by element size, largest first, then name: deterministic, and every
// tensor's data starts at a multiple of its element size (the header is padded to 8 bytes).
func orderTensors(ts []Tensor) []Tensor {
	out := append([]Tensor(nil), ts...)
	sort.SliceStable(out, func(i, j int) bool {
		si, sj := out[i].DType.Size(), out[j].DType.Size()
		if si != sj {
			return si > sj
		}
		return out[i].Name < out[j].Name
	})
	return out
}

func checkTensors(ts []Tensor) error {
	seen := map[string]bool{}
	for _, t := range ts {
		if t.Name == "" || t.Name == "__metadata__" {
			return fmt.Errorf("checkpoints: %q is not a valid tensor name", t.Name)
		}
		if seen[t.Name] {
			return fmt.Errorf("checkpoints: tensor %q given twice", t.Name)
		}
		seen[t.Name] = true
		if !t.DType.Known() {
			return fmt.Errorf("checkpoints: tensor %q: unknown dtype %q", t.Name, t.DType)
		}
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("checkpoints: tensor %q: negative dimension in %s", t.Name, shapeString(t.Shape))
			}
		}
		if want := t.NumElements() * int64(t.DType.Size()); t.ByteSize() != want {
			return fmt.Errorf("checkpoints: tensor %q: %s %s needs %d bytes, got %d", t.Name, t.DType, shapeString(t.Shape), want, t.ByteSize())
		}
	}
	return nil
}

// encodeHeader builds the header JSON for tensors in the given order, padded with spaces to
// a multiple of 8 bytes. Keys are written in data order.
func encodeHeader(ts []Tensor, metadata map[string]string) ([]byte, error) {
	buf := []byte{'{'}
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata)
		if err != nil {
			return nil, err
		}
		buf = append(buf, `"__metadata__":`...)
		buf = append(buf, m...)
	}
	var off int64
	for i, t := range ts {
		if i > 0 || len(metadata) > 0 {
			buf = append(buf, ',')
		}
		name, err := json.Marshal(t.Name)
		if err != nil {
			return nil, fmt.Errorf("checkpoints: tensor name %q: %w", t.Name, err)
		}
		buf = append(buf, name...)
		buf = append(buf, `:{"dtype":"`...)
		buf = append(buf, t.DType...)
		buf = append(buf, `","shape":[`...)
		for j, d := range t.Shape {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendInt(buf, d, 10)
		}
		end := off + t.ByteSize()
		buf = append(buf, `],"data_offsets":[`...)
		buf = strconv.AppendInt(buf, off, 10)
		buf = append(buf, ',')
		buf = strconv.AppendInt(buf, end, 10)
		buf = append(buf, "]}"...)
		off = end
	}
	buf = append(buf, '}')
	for len(buf)%8 != 0 {
		buf = append(buf, ' ')
	}
	return buf, nil
}

// withFormat adds the "format": "pt" entry that transformers requires when loading.
func withFormat(metadata map[string]string) map[string]string {
	m := map[string]string{"format": "pt"}
	for k, v := range metadata {
		m[k] = v
	}
	return m
}

// WriteFile writes tensors to one safetensors file atomically, in a deterministic order,
// with metadata in `__metadata__` (plus "format": "pt" unless metadata sets it).
func WriteFile(path string, tensors []Tensor, metadata map[string]string) error {
	if err := checkTensors(tensors); err != nil {
		return fmt.Errorf("%w (writing %s)", err, path)
	}
	ordered := orderTensors(tensors)
	hdr, err := encodeHeader(ordered, withFormat(metadata))
	if err != nil {
		return fmt.Errorf("checkpoints: %s: %w", path, err)
	}
	return WriteAtomic(path, func(w io.Writer) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(hdr)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		var buf []byte
		for _, t := range ordered {
			if t.Data == nil && t.Gen != nil {
				if buf == nil {
					buf = make([]byte, genChunk)
				}
				for off, n := int64(0), t.ByteSize(); off < n; off += genChunk {
					chunk := buf[:min(genChunk, n-off)]
					t.Gen(chunk, off)
					if _, err := w.Write(chunk); err != nil {
						return fmt.Errorf("checkpoints: writing %s: %w", path, err)
					}
				}
				continue
			}
			if _, err := w.Write(t.Data); err != nil {
				return fmt.Errorf("checkpoints: writing %s: %w", path, err)
			}
		}
		return nil
	})
}

// genChunk is how much of a generated tensor is held in memory at once.
const genChunk = 32 << 20

// DefaultShardBytes is the shard size transformers uses by default (5 GB).
const DefaultShardBytes = 5_000_000_000

// WriteSharded writes tensors as `{base}.safetensors` when they fit in one shard of maxBytes,
// else as `{base}-0000i-of-0000n.safetensors` shards plus `{base}.safetensors.index.json`
// (written last, so a reader never sees an index naming missing shards). It returns the
// files written, relative to dir.
func WriteSharded(dir, base string, tensors []Tensor, metadata map[string]string, maxBytes int64) ([]string, error) {
	if err := checkTensors(tensors); err != nil {
		return nil, err
	}
	if maxBytes <= 0 {
		maxBytes = DefaultShardBytes
	}
	ordered := orderTensors(tensors)
	var shards [][]Tensor
	var cur []Tensor
	var curBytes, total int64
	for _, t := range ordered {
		n := t.ByteSize()
		total += n
		if len(cur) > 0 && curBytes+n > maxBytes {
			shards = append(shards, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, t)
		curBytes += n
	}
	if len(cur) > 0 || len(shards) == 0 {
		shards = append(shards, cur)
	}
	if len(shards) == 1 {
		name := base + ".safetensors"
		return []string{name}, WriteFile(filepath.Join(dir, name), shards[0], metadata)
	}
	ix := Index{Metadata: map[string]any{"total_size": total}, WeightMap: map[string]string{}}
	var written []string
	for i, s := range shards {
		name := shardName(base, i+1, len(shards))
		if err := WriteFile(filepath.Join(dir, name), s, metadata); err != nil {
			return written, err
		}
		written = append(written, name)
		for _, t := range s {
			ix.WeightMap[t.Name] = name
		}
	}
	indexName := base + ".safetensors.index.json"
	if err := WriteJSON(filepath.Join(dir, indexName), ix); err != nil {
		return written, err
	}
	return append(written, indexName), nil
}

// CopyFile copies src to dst atomically.
func CopyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("checkpoints: %w", err)
	}
	defer in.Close()
	return WriteAtomic(dst, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

// SideFiles lists a model directory's files besides its weights, weight index and
// config.json: the generation config, vocabulary, tokenizer config and the like, which a
// derived model (merged, quantized) carries over unchanged.
func SideFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	var out []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || strings.HasSuffix(n, ".safetensors") || strings.HasSuffix(n, ".safetensors.index.json") || n == "config.json" {
			continue
		}
		out = append(out, n)
	}
	return out, nil
}
