//go:build qtcuda || cudaemu

package cuda

// Trainable embedding rows and tables in loss programs (kernels/embed_grad.cu, loaded when
// one of them is first launched): the special-token rows of --train-special-tokens and the
// whole tables of --modules-to-save.
//
//	EmbeddingRows   y [N, H] = rows [S, H] gathered by the step's row indices, 0 for -1
//	Embedding*Grad  dW [R, H] = 0, dW[idx[p]] += dy[p] over p = 0, 1, ... (R = S or V)
//	PlaceColumns    deferred into the add that reads it: logits[:, off:off+S] += x [N, S]
//	                (no [N, V] of zeros; the fusion "PlaceColumns + add")
//	PlaceColumnsGrad  a view of dlogits' columns off..off+S (no copy)
//
// The indices come from the op's own index function on the host, each run: the gather
// uploads them; a table's gradient groups the positions by row (a stable sort, so each
// row's positions stay in order) and sums every row's dy rows in one thread per column in
// position order from 0: no atomics, bitwise the CPU's scatterRows, the same every run.

import (
	"cmp"
	"fmt"
	"slices"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

// GatherRowsBF16 is gather_rows_bf16: y [len(idx), h] = the rows idx of the bf16 table w
// [rows, h] (a negative index gives zeros), with idx uploaded into scratch ([len(idx)] int32).
func (d *Device) GatherRowsBF16(y, w, scratch *Buffer, idx []int32, rows, h int) error {
	n := len(idx)
	if err := need(n > 0 && h > 0 && hold(int64(n)*int64(h)*4, y) && hold(int64(rows)*int64(h)*2, w) && hold(int64(n)*4, scratch), "GatherRowsBF16: %d rows of %d from a table of %d", n, h, rows); err != nil {
		return err
	}
	for i, r := range idx {
		if int(r) >= rows {
			return fmt.Errorf("cuda: GatherRowsBF16: row %d at position %d is outside [0, %d)", r, i, rows)
		}
	}
	if err := cudaErr("cuMemcpyHtoD(row indices)", d.drv.memcpyHtoD(scratch.Ptr, unsafe.Pointer(&idx[0]), int64(n)*4)); err != nil {
		return err
	}
	return d.launch("gather_rows_bf16", n, trainBlock, 0, y, w, scratch, h)
}

// ScatterRowsScratch is the int32 scratch ScatterRows needs for n positions.
func ScatterRowsScratch(n int) int64 { return int64(3*n+1) * 4 }

// ScatterRows is the gradient of a gathered table: dw [rows, h] = 0, then dw[idx[p]] +=
// dy[p] [len(idx), h] in position order (negative indices gather nothing): the positions
// grouped by row on the host into scratch (ScatterRowsScratch), dw zeroed, then
// segment_sum_rows over the rows that occur.
func (d *Device) ScatterRows(dw, dy, scratch *Buffer, idx []int32, rows, h int) error {
	n := len(idx)
	if err := need(n > 0 && h > 0 && rows > 0 && hold(int64(rows)*int64(h)*4, dw) && hold(int64(n)*int64(h)*4, dy) && hold(ScatterRowsScratch(n), scratch), "ScatterRows: %d rows of %d from %d positions", rows, h, n); err != nil {
		return err
	}
	seg, err := segmentRows(idx, rows)
	if err != nil {
		return err
	}
	if err := cudaErr("cuMemsetD32(table gradient)", d.drv.memsetD32(dw.Ptr, 0, int64(rows)*int64(h))); err != nil {
		return err
	}
	if seg.count == 0 {
		return nil
	}
	if err := cudaErr("cuMemcpyHtoD(row segments)", d.drv.memcpyHtoD(scratch.Ptr, unsafe.Pointer(&seg.packed[0]), int64(len(seg.packed))*4)); err != nil {
		return err
	}
	u := int64(seg.count)
	rowsBuf, starts, order := scratch.Slice(0, u*4), scratch.Slice(u*4, (u+1)*4), scratch.Slice((2*u+1)*4, int64(len(seg.packed))*4-(2*u+1)*4)
	per := (h + trainBlock - 1) / trainBlock
	return d.launch("segment_sum_rows", seg.count*per, trainBlock, 0, dw, dy, rowsBuf, starts, order, h)
}

// rowSegments are the positions of idx grouped by row: packed holds the rows that occur
// (ascending, count of them), the start of each one's positions in order (count+1) and the
// positions, each row's ascending.
type rowSegments struct {
	packed []int32
	count  int
}

func segmentRows(idx []int32, rows int) (rowSegments, error) {
	var order []int32
	for p, r := range idx {
		if int(r) >= rows {
			return rowSegments{}, fmt.Errorf("cuda: ScatterRows: row %d at position %d is outside [0, %d)", r, p, rows)
		}
		if r >= 0 {
			order = append(order, int32(p))
		}
	}
	slices.SortStableFunc(order, func(a, b int32) int { return cmp.Compare(idx[a], idx[b]) })
	var occur, starts []int32
	for k, p := range order {
		if k == 0 || idx[p] != idx[order[k-1]] {
			occur = append(occur, idx[p])
			starts = append(starts, int32(k))
		}
	}
	starts = append(starts, int32(len(order)))
	packed := append(append(occur, starts...), order...)
	return rowSegments{packed: packed, count: len(occur)}, nil
}

// AddColumns is add_columns: y[i, off+j] += x[i, j] for x [n, s] and y rows ystride apart.
func (d *Device) AddColumns(y, x *Buffer, n, s, ystride, off int) error {
	if err := need(n > 0 && s > 0 && off >= 0 && off+s <= ystride && hold(int64(n)*int64(s)*4, x) && hold(int64(n)*int64(ystride)*4, y), "AddColumns: [%d, %d] at column %d of rows %d apart", n, s, off, ystride); err != nil {
		return err
	}
	return d.launch("add_columns", grid(int64(n)*int64(s)), trainBlock, 0, y, x, n, s, ystride, off)
}

// scratchFor is a program-owned buffer of bytes for the per-run indices of the current node.
func (c *compiler) scratchFor(bytes int64, what string) (*Buffer, error) {
	b, err := c.d.Alloc(bytes, what)
	if err == nil {
		c.p.owned, c.p.scratch = append(c.p.owned, b), append(c.p.scratch, b)
	}
	return b, err
}

// gatherRows is EmbeddingRows (a partial table: special-token rows) in a loss program.
func (c *compiler) gatherRows(n *G.Node, in []*value) (bool, error) {
	o, d, w := n.Op().(*autograd.GatherOp), c.d, in[0]
	if !c.isLoss() {
		return false, fmt.Errorf("cuda: %s runs on the GPU in training graphs only (special-token rows: merge the adapter to run it)", o.String())
	}
	if !w.param || !w.bf16 {
		return false, fmt.Errorf("cuda: %s: the table must be a parameter", c.what())
	}
	scratch, err := c.scratchFor(int64(o.Rows())*4, "row indices of "+n.Name())
	if err != nil {
		return false, err
	}
	y := c.alloc(n, o.Rows(), w.cols, false)
	rows, h := w.rows, w.cols
	c.emit(func() error {
		idx, err := o.Indices(rows)
		if err != nil {
			return err
		}
		return d.GatherRowsBF16(y.buf, w.buf, scratch, idx, rows, h)
	})
	return false, nil
}

// scatter is the gradient of a gathered table (Embedding with wte trained in full, or
// EmbeddingRows) in a loss program.
func (c *compiler) scatter(n *G.Node, in []*value) (bool, error) {
	o, d, dy := n.Op().(*autograd.ScatterOp), c.d, in[1]
	if !c.isLoss() {
		return false, fmt.Errorf("cuda: %s runs on the GPU in training graphs only", o.String())
	}
	if err := c.whole(dy); err != nil {
		return false, err
	}
	if dy.bf16 || dy.stride != dy.cols || dy.lazy != 0 {
		return false, fmt.Errorf("cuda: %s of a bf16 or strided gradient", c.what())
	}
	s := n.Shape()
	rows, h := s[0], s[1]
	if dy.cols != h || dy.rows != o.Gather().Rows() {
		return false, fmt.Errorf("cuda: %s: gradient [%d, %d] for %d positions of %d", c.what(), dy.rows, dy.cols, o.Gather().Rows(), h)
	}
	scratch, err := c.scratchFor(ScatterRowsScratch(o.Gather().Rows()), "row segments of "+n.Name())
	if err != nil {
		return false, err
	}
	y := c.alloc(n, rows, h, false)
	c.emit(func() error {
		idx, err := o.Gather().Indices(rows)
		if err != nil {
			return err
		}
		return d.ScatterRows(y.buf, dy.ptr(), scratch, idx, rows, h)
	})
	return false, nil
}

// columns is PlaceColumns: deferred into the add that reads it (lazyColumns), and its
// gradient, a view of the columns of the logits' gradient.
func (c *compiler) columns(n *G.Node, in []*value) (bool, error) {
	o, x := n.Op().(*autograd.ColumnsOp), in[0]
	if err := c.whole(x); err != nil {
		return false, err
	}
	if x.bf16 || x.lazy != 0 {
		return false, fmt.Errorf("cuda: %s of a bf16 or deferred value", c.what())
	}
	if o.Take() {
		if x.cols != o.Width() {
			return false, fmt.Errorf("cuda: %s of %d columns for %d", c.what(), x.cols, o.Width())
		}
		c.viewOf(n, x.root, &value{buf: x.buf, off: x.off + int64(o.Offset())*4, rows: x.rows, cols: o.Narrow(), stride: x.stride})
		return true, nil
	}
	if !c.isLoss() || len(c.users[n]) != 1 || !autograd.IsAdd(c.users[n][0].Op()) || x.stride != x.cols {
		return false, fmt.Errorf("cuda: %s runs on the GPU in training graphs only, added to the logits (special-token rows: merge the adapter to run it)", c.what())
	}
	v := *x
	v.lazy, v.x = lazyColumns, x
	v.cols, v.stride = o.Width(), o.Width()
	c.vals[n], c.rootOf[n] = &v, x.root // x is read where the add runs
	c.lastUse[x.root] = max(c.lastUse[x.root], c.pos[c.users[n][0]])
	return true, nil
}

// addColumns is the add of a deferred PlaceColumns (fusion "PlaceColumns + add"): the other
// addend, in place when it dies here, gets x added into its columns off..off+S.
func (c *compiler) addColumns(n *G.Node, a, b *value) (bool, error) {
	d, i := c.d, 0
	if b.lazy == lazyColumns {
		i = 1
	}
	wide, other := []*value{a, b}[i], []*value{a, b}[1-i]
	k, o := c.kids[n][1-i], c.kids[n][i].Op().(*autograd.ColumnsOp)
	if other.lazy != 0 || other.bf16 || other.parts != 0 || other.stride != other.cols || other.cols != wide.cols || other.rows != wide.rows {
		return false, fmt.Errorf("cuda: %s adds placed columns to %v", c.what(), k.Shape())
	}
	x := wide.x
	var y *value
	if c.dies(k) {
		y = c.inPlace(n, k)
	} else {
		y = c.alloc(n, other.rows, other.cols, false)
		bytes := int64(other.rows*other.cols) * 4
		c.emitNamed(c.what()+" (copy)", func() error { return d.copyDtoD(y.buf.Ptr, other.ptr().Ptr, bytes) })
	}
	rows, cols := x.rows, x.cols
	c.emitNamed(c.what()+" with the placed columns", func() error { return d.AddColumns(y.buf, x.ptr(), rows, cols, y.stride, o.Offset()) })
	return false, nil
}
