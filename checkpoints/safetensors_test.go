package checkpoints

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

func f32Bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func u16Bytes(v ...uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

func sampleTensors() []Tensor {
	i64 := make([]byte, 16)
	binary.LittleEndian.PutUint64(i64, uint64(1<<40))
	binary.LittleEndian.PutUint64(i64[8:], math.MaxUint64) // -1
	return []Tensor{
		{Name: "w.f32", DType: F32, Shape: []int64{2, 2}, Data: f32Bytes(1, -2, 3.5, 0)},
		{Name: "w.bf16", DType: BF16, Shape: []int64{3}, Data: u16Bytes(F32ToBF16(1), F32ToBF16(-0.5), F32ToBF16(3))},
		{Name: "w.f16", DType: F16, Shape: []int64{2}, Data: u16Bytes(F32ToF16(0.25), F32ToF16(-65504))},
		{Name: "ids.i32", DType: I32, Shape: []int64{2}, Data: []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}},
		{Name: "ids.i64", DType: I64, Shape: []int64{2}, Data: i64},
		{Name: "mask.u8", DType: U8, Shape: []int64{3}, Data: []byte{0, 7, 255}},
		{Name: "mask.bool", DType: Bool, Shape: []int64{2}, Data: []byte{1, 0}},
		{Name: "scalar", DType: F32, Shape: []int64{}, Data: f32Bytes(42)},
		{Name: "empty", DType: F32, Shape: []int64{0, 4}, Data: nil},
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.safetensors")
	in := sampleTensors()
	if err := WriteFile(path, in, map[string]string{"who": "test"}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Header.Metadata["who"] != "test" || f.Header.Metadata["format"] != "pt" {
		t.Errorf("metadata %v", f.Header.Metadata)
	}
	for _, want := range in {
		got, err := f.Tensor(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("%s: got %s %v %x, want %s %v %x", want.Name, got.DType, got.Shape, got.Data, want.DType, want.Shape, want.Data)
		}
		info, _ := f.Header.Lookup(want.Name)
		if (f.Header.DataStart+info.Begin)%int64(want.DType.Size()) != 0 {
			t.Errorf("%s is not aligned to its element size", want.Name)
		}
	}
	vals := map[string][]float32{"w.f32": {1, -2, 3.5, 0}, "w.bf16": {1, -0.5, 3}, "w.f16": {0.25, -65504}, "scalar": {42}}
	for name, want := range vals {
		tt, err := f.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tt.Float32()
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s as float32: %v %v, want %v", name, got, err, want)
		}
	}
	i64, err := f.Tensor("ids.i64")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := i64.Int64(); err != nil || !slices.Equal(v, []int64{1 << 40, -1}) {
		t.Errorf("I64: %v %v", v, err)
	}
	i32, err := f.Tensor("ids.i32")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := i32.Int32(); err != nil || !slices.Equal(v, []int32{1, -1}) {
		t.Errorf("I32: %v %v", v, err)
	}
	if _, err := i32.Float32(); err == nil {
		t.Error("an I32 tensor converted to float32")
	}
}

func TestWriteIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	in := sampleTensors()
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	if err := WriteFile(a, in, nil); err != nil {
		t.Fatal(err)
	}
	slices.Reverse(in)
	if err := WriteFile(b, in, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tfile.Read(t, a), tfile.Read(t, b)) {
		t.Fatal("the same tensors in another order gave another file")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("temporary files left behind: %d entries", len(entries))
	}
}

func TestWriteKeepsOldFileOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keep.safetensors")
	if err := WriteFile(path, sampleTensors(), nil); err != nil {
		t.Fatal(err)
	}
	before := tfile.Read(t, path)
	bad := []Tensor{{Name: "x", DType: F32, Shape: []int64{3}, Data: f32Bytes(1)}}
	if err := WriteFile(path, bad, nil); err == nil || !strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("mis-sized tensor: %v", err)
	}
	if !bytes.Equal(before, tfile.Read(t, path)) {
		t.Fatal("a failed write changed the existing file")
	}
}

func TestShardedWriteAndOpenDir(t *testing.T) {
	dir := t.TempDir()
	var in []Tensor
	for i := 0; i < 10; i++ {
		in = append(in, Tensor{Name: "t" + string(rune('a'+i)), DType: F32, Shape: []int64{25}, Data: f32Bytes(make([]float32, 25)...)})
	}
	files, err := WriteSharded(dir, "model", in, nil, 250) // 100 bytes a tensor: 2 a shard
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 6 || files[5] != "model.safetensors.index.json" || files[0] != "model-00001-of-00005.safetensors" {
		t.Fatalf("files %v", files)
	}
	ck, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if len(ck.Names()) != 10 || ck.Index == nil || ck.Index.TotalSize() != 1000 || ck.TotalBytes() != 1000 {
		t.Fatalf("names %v total %d", ck.Names(), ck.Index.TotalSize())
	}
	// One shard: a plain model.safetensors, no index.
	one := t.TempDir()
	files, err = WriteSharded(one, "model", in[:2], nil, 0)
	if err != nil || !slices.Equal(files, []string{"model.safetensors"}) {
		t.Fatalf("single shard: %v %v", files, err)
	}
	if ck, err := OpenDir(one); err != nil || len(ck.Names()) != 2 {
		t.Fatalf("single file: %v", err)
	}
}

func TestIndexProblems(t *testing.T) {
	dir := t.TempDir()
	in := []Tensor{{Name: "a", DType: F32, Shape: []int64{1}, Data: f32Bytes(1)}, {Name: "b", DType: F32, Shape: []int64{1}, Data: f32Bytes(2)}}
	if _, err := WriteSharded(dir, "model", in, nil, 4); err != nil {
		t.Fatal(err)
	}
	indexPath := filepath.Join(dir, "model.safetensors.index.json")
	good := tfile.Read(t, indexPath)
	cases := []struct{ index, want string }{
		{`{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00003-of-00003.safetensors"}}`, "model-00003-of-00003.safetensors, which is missing"},
		{`{"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}`, `tensor "a" is indexed in model-00002-of-00002.safetensors but that shard does not hold it`},
		{`{"weight_map": {"a": "../etc/passwd"}}`, "not a file name in the same directory"},
		{`{"weight_map": {}}`, "weight_map is empty"},
		{`[1, 2]`, "not a safetensors index"},
	}
	for _, c := range cases {
		if err := os.WriteFile(indexPath, []byte(c.index), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := OpenDir(dir)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("index %s: error %v, want %q", c.index, err, c.want)
		}
	}
	tfile.Write(t, indexPath, good)
	if ck, err := OpenDir(dir); err != nil {
		t.Fatal(err)
	} else {
		ck.Close()
	}
}

// header builds a file: length, JSON, data.
func rawFile(js string, data int) []byte {
	b := make([]byte, 8, 8+len(js)+data)
	binary.LittleEndian.PutUint64(b, uint64(len(js)))
	b = append(b, js...)
	return append(b, make([]byte, data)...)
}

func TestHeaderValidation(t *testing.T) {
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"too short", []byte{1, 2, 3}, "too short"},
		{"huge header length", binary.LittleEndian.AppendUint64(nil, 1<<40), "exceeds"},
		{"header past end", binary.LittleEndian.AppendUint64(nil, 100), "runs past the end"},
		{"not json", rawFile("nope", 0), "not a JSON object"},
		{"array", rawFile("[]", 0), "not a JSON object"},
		{"truncated json", rawFile(`{"a":{"dtype":"F32"`, 0), `"a"`},
		{"unknown dtype", rawFile(`{"a":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}}`, 1), `dtype "F8" is not supported`},
		{"missing field", rawFile(`{"a":{"dtype":"F32","shape":[1]}}`, 4), "needs dtype, shape and data_offsets"},
		{"negative dim", rawFile(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4), "not a non-negative integer"},
		{"size mismatch", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4), "needs 8 bytes"},
		{"out of range", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4), "run past the 4-byte data section"},
		{"reversed", rawFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}`, 4), "end before they begin"},
		{"three offsets", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}`, 1), "must be [begin, end]"},
		{"overlap", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}`, 8), "overlap"},
		{"hole", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "belong to no tensor"},
		{"trailing bytes", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 8), "4 trailing bytes"},
		{"duplicate", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2), "named twice"},
		{"garbage after", rawFile(`{}x`, 0), "garbage"},
		{"bad metadata", rawFile(`{"__metadata__":{"a":1}}`, 0), "__metadata__"},
		{"shape overflow", rawFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 4), "too many elements"},
		{"invalid utf8", rawFile("{\"\xff\":1}", 0), "not valid UTF-8"},
	}
	for _, c := range cases {
		_, err := ReadHeader(bytes.NewReader(c.file), int64(len(c.file)), "bad.safetensors")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "bad.safetensors") {
			t.Errorf("%s: error %v, want one naming the file and saying %q", c.name, err, c.want)
		}
	}
	ok := rawFile(`{"__metadata__":{"k":"v"},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}    `, 2)
	h, err := ReadHeader(bytes.NewReader(ok), int64(len(ok)), "ok")
	if err != nil || len(h.Tensors) != 2 || h.Tensors[0].Name != "a" || h.Metadata["k"] != "v" {
		t.Fatalf("valid header: %v %+v", err, h)
	}
}

func TestTruncatedFileIsAnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	if err := WriteFile(path, sampleTensors(), nil); err != nil {
		t.Fatal(err)
	}
	b := tfile.Read(t, path)
	tfile.Write(t, path, b[:len(b)-3])
	_, err := Open(path)
	if err == nil || !strings.Contains(err.Error(), "truncated") || !strings.Contains(err.Error(), path) {
		t.Fatalf("truncated file: %v", err)
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`), int64(4))
	f.Add([]byte(`{"__metadata__":{"format":"pt"},"x":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}`), int64(8))
	f.Add([]byte(`{"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]},"b":{"dtype":"BOOL","shape":[0],"data_offsets":[1,1]}}`), int64(1))
	f.Add([]byte(`{}`), int64(0))
	f.Fuzz(func(t *testing.T, js []byte, dataLen int64) {
		if dataLen < 0 {
			return
		}
		h, err := ParseHeader(js, dataLen, "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "checkpoints: fuzz") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		// Accepted headers tile the data section exactly with correctly sized tensors.
		pos := int64(0)
		for _, ti := range h.Tensors {
			if ti.Begin != pos || ti.End < ti.Begin || ti.NumElements()*int64(ti.DType.Size()) != ti.End-ti.Begin {
				t.Fatalf("accepted a bad tensor %+v", ti)
			}
			pos = ti.End
		}
		if pos != dataLen {
			t.Fatalf("accepted tensors covering %d of %d bytes", pos, dataLen)
		}
		var probe map[string]json.RawMessage
		if json.Unmarshal(js, &probe) != nil {
			t.Fatalf("accepted invalid JSON %q", js)
		}
	})
}

func TestHalfConversions(t *testing.T) {
	for _, v := range []float32{0, 1, -1, 0.5, 65504, -65504, 6.103515625e-05, 5.960464477539063e-08, float32(math.Inf(1))} {
		if got := F16ToF32(F32ToF16(v)); got != v {
			t.Errorf("f16 round trip of %g gave %g", v, got)
		}
	}
	for _, v := range []float32{0, 1, -1, 0.5, 3.0e38, 1.0e-38, float32(math.Inf(-1))} {
		if got := BF16ToF32(F32ToBF16(v)); math.Abs(float64(got-v)) > math.Abs(float64(v))/128 {
			t.Errorf("bf16 round trip of %g gave %g", v, got)
		}
	}
	if F32ToF16(1e6) != 0x7c00 {
		t.Error("overflow did not give +inf")
	}
	// Ties to even: 1 + 2^-8 lies halfway between two bf16 values and rounds down to 1.
	if got := BF16ToF32(F32ToBF16(1 + 1.0/256)); got != 1 {
		t.Errorf("bf16 tie rounded to %g", got)
	}
	if got := BF16ToF32(F32ToBF16(1 + 3.0/256)); got != 1+4.0/256 {
		t.Errorf("bf16 tie rounded to %g", got)
	}
	if !math.IsNaN(float64(BF16ToF32(F32ToBF16(float32(math.NaN()))))) {
		t.Error("NaN lost")
	}
}

// TestFloat32Into: a floating tensor converts in place as Float32 converts it; an integer
// tensor, one with too few bytes and a destination of another length are refused, and
// CheckFloat32 refuses the first two without converting anything.
func TestFloat32Into(t *testing.T) {
	raw := make([]byte, 6)
	for i, v := range []float32{1.5, -2, 0.25} {
		binary.LittleEndian.PutUint16(raw[2*i:], uint16(math.Float32bits(v)>>16))
	}
	x := Tensor{Name: "x", DType: BF16, Shape: []int64{3}, Data: raw}
	want, err := x.Float32()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, 3)
	if err := x.Float32Into(got); err != nil || !slices.Equal(got, want) || !slices.Equal(got, []float32{1.5, -2, 0.25}) {
		t.Fatalf("Float32Into: %v %v, Float32 %v", got, err, want)
	}
	if err := x.Float32Into(make([]float32, 2)); err == nil {
		t.Error("converted 3 elements into 2")
	}
	for _, bad := range []Tensor{{Name: "i", DType: I32, Shape: []int64{1}, Data: make([]byte, 4)}, {Name: "short", DType: F32, Shape: []int64{2}, Data: make([]byte, 4)}} {
		if err := bad.CheckFloat32(); err == nil || !strings.Contains(err.Error(), bad.Name) {
			t.Errorf("CheckFloat32 of %s: %v", bad.Name, err)
		}
		if err := bad.Float32Into(make([]float32, bad.NumElements())); err == nil {
			t.Errorf("Float32Into of %s converted it", bad.Name)
		}
	}
}
