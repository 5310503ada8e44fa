package checkpoints

// The safetensors layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
// (optionally padded with spaces), then the data section. The JSON maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the data section;
// the optional "__metadata__" entry maps strings to strings.
//
// ParseHeader trusts nothing: the length is bounded, the JSON must be one object without
// duplicate names, every dtype known, every shape non-negative with dtype x shape = byte
// length, and the tensors must tile the data section exactly (in range, no overlap, no hole).

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxHeaderBytes bounds the JSON header (the same limit as the reference implementation).
const MaxHeaderBytes = 100 << 20

// TensorInfo describes one tensor of a safetensors file.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int64
	// Begin and End are byte offsets into the data section.
	Begin, End int64
}

// NumElements is the product of the shape (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Header is the parsed, validated header of one safetensors file.
type Header struct {
	Metadata map[string]string
	// Tensors in file order (ascending data offset).
	Tensors []TensorInfo
	// DataStart is the absolute file offset of the data section.
	DataStart int64
	byName    map[string]int
}

// Lookup returns the tensor called name.
func (h *Header) Lookup(name string) (TensorInfo, bool) {
	i, ok := h.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	return h.Tensors[i], true
}

// FormatError is a safetensors file that breaks the format; Tensor is empty for a problem
// with the file as a whole.
type FormatError struct {
	File   string
	Tensor string
	Msg    string
}

func (e *FormatError) Error() string {
	where := e.File
	if where == "" {
		where = "safetensors"
	}
	if e.Tensor != "" {
		return fmt.Sprintf("checkpoints: %s: tensor %q: %s", where, e.Tensor, e.Msg)
	}
	return fmt.Sprintf("checkpoints: %s: %s", where, e.Msg)
}

// ReadHeader reads and validates the header of a safetensors file of the given total size.
// file names the file in errors.
func ReadHeader(r io.ReaderAt, size int64, file string) (*Header, error) {
	bad := func(format string, args ...any) error {
		return &FormatError{File: file, Msg: fmt.Sprintf(format, args...)}
	}
	if size < 8 {
		return nil, bad("file is %d bytes, too short to hold the 8-byte header length (truncated download?)", size)
	}
	var lenBuf [8]byte
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("checkpoints: %s: reading header length: %w", file, err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > MaxHeaderBytes {
		return nil, bad("header length %d exceeds the %d-byte limit: not a safetensors file, or corrupted", n, MaxHeaderBytes)
	}
	if int64(n) > size-8 {
		return nil, bad("header length %d runs past the end of the %d-byte file (truncated download?)", n, size)
	}
	js := make([]byte, n)
	if _, err := r.ReadAt(js, 8); err != nil {
		return nil, fmt.Errorf("checkpoints: %s: reading header: %w", file, err)
	}
	return ParseHeader(js, size-8-int64(n), file)
}

// ParseHeader validates header JSON against a data section of dataLen bytes.
func ParseHeader(js []byte, dataLen int64, file string) (*Header, error) {
	bad := func(tensor, format string, args ...any) error {
		return &FormatError{File: file, Tensor: tensor, Msg: fmt.Sprintf(format, args...)}
	}
	if !utf8.Valid(js) {
		return nil, bad("", "header is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, bad("", "header is not a JSON object")
	}
	h := &Header{DataStart: 8 + int64(len(js)), byName: map[string]int{}}
	seenMeta := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bad("", "header JSON: %v", err)
		}
		name := tok.(string) // object keys are always strings
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, bad(name, "header JSON: %v", err)
		}
		if name == "__metadata__" {
			if seenMeta {
				return nil, bad("", "__metadata__ appears twice")
			}
			seenMeta = true
			if err := json.Unmarshal(raw, &h.Metadata); err != nil {
				return nil, bad("", "__metadata__ must map strings to strings: %v", err)
			}
			continue
		}
		if _, dup := h.byName[name]; dup {
			return nil, bad(name, "named twice in the header")
		}
		t, err := parseEntry(name, raw, dataLen)
		if err != nil {
			return nil, bad(name, "%s", err)
		}
		h.byName[name] = len(h.Tensors)
		h.Tensors = append(h.Tensors, t)
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, bad("", "header JSON: %v", err)
	}
	if rest := bytes.TrimRight(js[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return nil, bad("", "%d bytes of garbage after the header JSON", len(rest))
	}
	// The tensors must tile the data section: sorted by offset, each starts where the last ended.
	sort.SliceStable(h.Tensors, func(i, j int) bool {
		a, b := h.Tensors[i], h.Tensors[j]
		if a.Begin != b.Begin {
			return a.Begin < b.Begin
		}
		return a.End < b.End
	})
	pos := int64(0)
	for i, t := range h.Tensors {
		if t.Begin < pos {
			return nil, bad(t.Name, "bytes %d..%d overlap tensor %q", t.Begin, t.End, h.Tensors[i-1].Name)
		}
		if t.Begin > pos {
			return nil, bad(t.Name, "data starts at byte %d but the previous tensor ends at %d: %d bytes belong to no tensor", t.Begin, pos, t.Begin-pos)
		}
		pos = t.End
		h.byName[t.Name] = i
	}
	if pos < dataLen {
		return nil, bad("", "the tensors cover %d bytes but the data section holds %d: %d trailing bytes belong to no tensor", pos, dataLen, dataLen-pos)
	}
	return h, nil
}

type rawEntry struct {
	DType       *string        `json:"dtype"`
	Shape       *[]json.Number `json:"shape"`
	DataOffsets []json.Number  `json:"data_offsets"`
}

func parseEntry(name string, raw json.RawMessage, dataLen int64) (TensorInfo, error) {
	t := TensorInfo{Name: name}
	var e rawEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return t, fmt.Errorf("entry must be {\"dtype\", \"shape\", \"data_offsets\"}: %v", err)
	}
	if e.DType == nil || e.Shape == nil || e.DataOffsets == nil {
		return t, fmt.Errorf("entry needs dtype, shape and data_offsets")
	}
	if len(e.DataOffsets) != 2 {
		return t, fmt.Errorf("data_offsets must be [begin, end], got %d numbers", len(e.DataOffsets))
	}
	t.DType = DType(*e.DType)
	if !t.DType.Known() {
		return t, fmt.Errorf("dtype %q is not supported (expected one of F32, F16, BF16, I32, I64, U8, BOOL)", *e.DType)
	}
	numel := uint64(1)
	for _, s := range *e.Shape {
		d, err := strconv.ParseInt(s.String(), 10, 64)
		if err != nil || d < 0 {
			return t, fmt.Errorf("shape entry %s is not a non-negative integer", s)
		}
		hi, lo := bits.Mul64(numel, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return t, fmt.Errorf("shape %v has too many elements", *e.Shape)
		}
		numel = lo
		t.Shape = append(t.Shape, d)
	}
	var off [2]int64
	for i, s := range e.DataOffsets {
		v, err := strconv.ParseInt(s.String(), 10, 64)
		if err != nil || v < 0 {
			return t, fmt.Errorf("data_offsets entry %s is not a non-negative integer", s)
		}
		off[i] = v
	}
	t.Begin, t.End = off[0], off[1]
	if t.End < t.Begin {
		return t, fmt.Errorf("data_offsets [%d, %d] end before they begin", t.Begin, t.End)
	}
	if t.End > dataLen {
		return t, fmt.Errorf("data_offsets [%d, %d] run past the %d-byte data section (truncated file?)", t.Begin, t.End, dataLen)
	}
	hi, want := bits.Mul64(numel, uint64(t.DType.Size()))
	if hi != 0 || want != uint64(t.End-t.Begin) {
		return t, fmt.Errorf("%s %s needs %d bytes but data_offsets [%d, %d] hold %d", t.DType, shapeString(t.Shape), numel*uint64(t.DType.Size()), t.Begin, t.End, t.End-t.Begin)
	}
	return t, nil
}

func shapeString(shape []int64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
