package checkpoints

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"unsafe"
)

// Tensor is one tensor's raw little-endian bytes with its type and shape. A Tensor read from
// a memory-mapped File aliases the mapping: it is valid until the File is closed and must not
// be written to.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []byte
	// Gen, when Data is nil, produces the bytes for writing in chunks: it fills dst with the
	// tensor's bytes starting at byte offset off. It lets writers stream tensors larger than
	// memory (random models of Qwen-7B's size).
	Gen func(dst []byte, off int64)
}

// F32Tensor is a float32 tensor held in memory.
func F32Tensor(name string, shape []int64, v []float32) Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return Tensor{Name: name, DType: F32, Shape: shape, Data: b}
}

// ByteSize is the size of the tensor's data: len(Data), or dtype x shape for a generated tensor.
func (t Tensor) ByteSize() int64 {
	if t.Data == nil && t.Gen != nil {
		return t.NumElements() * int64(t.DType.Size())
	}
	return int64(len(t.Data))
}

// NumElements is the product of the shape (1 for a scalar).
func (t Tensor) NumElements() int64 { return TensorInfo{Shape: t.Shape}.NumElements() }

// Float32 converts an F32, F16 or BF16 tensor to a new float32 slice.
func (t Tensor) Float32() ([]float32, error) {
	if err := t.CheckFloat32(); err != nil {
		return nil, err
	}
	out := make([]float32, t.NumElements())
	return out, t.Float32Into(out)
}

// CheckFloat32 reports what keeps Float32 from converting the tensor: a type other than F32,
// F16 or BF16, or other bytes than its shape needs.
func (t Tensor) CheckFloat32() error {
	if t.DType != F32 && t.DType != F16 && t.DType != BF16 {
		return fmt.Errorf("checkpoints: tensor %q: dtype %s is not a floating type", t.Name, t.DType)
	}
	if int64(len(t.Data)) != t.NumElements()*int64(t.DType.Size()) {
		return fmt.Errorf("checkpoints: tensor %q: %d bytes for %s %s", t.Name, len(t.Data), t.DType, shapeString(t.Shape))
	}
	return nil
}

// Float32Into converts the tensor into dst, which has its number of elements.
func (t Tensor) Float32Into(dst []float32) error {
	if err := t.CheckFloat32(); err != nil {
		return err
	}
	if int64(len(dst)) != t.NumElements() {
		return fmt.Errorf("checkpoints: tensor %q: %d elements into %d", t.Name, t.NumElements(), len(dst))
	}
	if err := decodeFloat32(t.DType, t.Data, dst); err != nil {
		return fmt.Errorf("checkpoints: tensor %q: %w", t.Name, err)
	}
	return nil
}

// Uint16 returns the raw 16-bit elements of an F16 or BF16 tensor (for weights kept in
// half precision).
func (t Tensor) Uint16() ([]uint16, error) {
	if t.DType != BF16 && t.DType != F16 {
		return nil, fmt.Errorf("checkpoints: tensor %q is %s, not BF16 or F16", t.Name, t.DType)
	}
	out := make([]uint16, len(t.Data)/2)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(t.Data[2*i:])
	}
	return out, nil
}

// Int32 returns the elements of an I32 tensor.
func (t Tensor) Int32() ([]int32, error) {
	if t.DType != I32 {
		return nil, fmt.Errorf("checkpoints: tensor %q is %s, not I32", t.Name, t.DType)
	}
	out := make([]int32, len(t.Data)/4)
	for i := range out {
		out[i] = int32(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out, nil
}

// Int64 returns the elements of an I64 or I32 tensor widened to int64.
func (t Tensor) Int64() ([]int64, error) {
	switch t.DType {
	case I64:
		out := make([]int64, len(t.Data)/8)
		for i := range out {
			out[i] = int64(binary.LittleEndian.Uint64(t.Data[8*i:]))
		}
		return out, nil
	case I32:
		v, err := t.Int32()
		out := make([]int64, len(v))
		for i, x := range v {
			out[i] = int64(x)
		}
		return out, err
	}
	return nil, fmt.Errorf("checkpoints: tensor %q is %s, not an integer type", t.Name, t.DType)
}

// File is an open safetensors file. Its header is validated on Open; tensor data is read
// lazily, through a read-only memory map where the platform has one.
type File struct {
	Path   string
	Header *Header
	Size   int64
	f      *os.File
	mapped []byte
	unmap  func() error
}

// Open opens and validates one safetensors file.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	h, err := ReadHeader(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	sf := &File{Path: path, Header: h, Size: st.Size(), f: f}
	if m, unmap, err := mapFile(f, st.Size()); err == nil {
		sf.mapped, sf.unmap = m, unmap
	} else if !errors.Is(err, errors.ErrUnsupported) {
		f.Close()
		return nil, fmt.Errorf("checkpoints: %s: memory-mapping: %w", path, err)
	}
	return sf, nil
}

// Close releases the mapping and the file; tensors read from it become invalid.
func (f *File) Close() error {
	var err error
	if f.unmap != nil {
		err = f.unmap()
		f.unmap, f.mapped = nil, nil
	}
	if f.f != nil {
		if cerr := f.f.Close(); err == nil {
			err = cerr
		}
		f.f = nil
	}
	return err
}

// Tensor returns the named tensor; with a memory map its Data aliases the file.
func (f *File) Tensor(name string) (Tensor, error) {
	info, ok := f.Header.Lookup(name)
	if !ok {
		return Tensor{}, fmt.Errorf("checkpoints: %s: no tensor %q", f.Path, name)
	}
	return f.read(info)
}

func (f *File) read(info TensorInfo) (Tensor, error) {
	t := Tensor{Name: info.Name, DType: info.DType, Shape: info.Shape}
	lo, hi := f.Header.DataStart+info.Begin, f.Header.DataStart+info.End
	if f.mapped != nil {
		t.Data = f.mapped[lo:hi:hi]
		return t, nil
	}
	if f.f == nil {
		return t, fmt.Errorf("checkpoints: %s is closed", f.Path)
	}
	t.Data = make([]byte, hi-lo)
	if _, err := f.f.ReadAt(t.Data, lo); err != nil {
		return t, fmt.Errorf("checkpoints: %s: tensor %q: %w", f.Path, info.Name, err)
	}
	return t, nil
}

// Uint16View returns the 16-bit elements of an F16 or BF16 tensor without copying when the
// data is 2-byte aligned (always, for a memory-mapped file written by this package or by
// Hugging Face); the slice then aliases the file mapping and must not be written. Otherwise
// it returns a copy.
func (t Tensor) Uint16View() ([]uint16, error) {
	if t.DType != BF16 && t.DType != F16 {
		return nil, fmt.Errorf("checkpoints: tensor %q is %s, not BF16 or F16", t.Name, t.DType)
	}
	if len(t.Data) == 0 {
		return []uint16{}, nil
	}
	if !littleEndian || uintptr(unsafe.Pointer(&t.Data[0]))%2 != 0 {
		return t.Uint16()
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&t.Data[0])), len(t.Data)/2), nil
}

// littleEndian reports whether this machine stores integers as safetensors does.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()
