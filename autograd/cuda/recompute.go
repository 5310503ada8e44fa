//go:build qtcuda || cudaemu

package cuda

// Activation checkpointing of training programs. The model marks every block's input, and
// the last block's output, with Checkpoint; block b is the forward nodes that read mark b
// (through their inputs) and not mark b+1. Without checkpointing every forward value a
// gradient node reads lives from its forward until that gradient node, so at the start of
// the backward every layer's activations are live at once. With it (GradOptions.Checkpoint)
// the compile driver runs the launches in another order, its schedule:
//
//   - the graph's topological order, as without checkpointing, and
//   - just before the first gradient node that reads a value of block b, block b's forward
//     again: the nodes of the block that gradient nodes read and everything inside the block
//     they are computed from (not the MLP's down projection and the residual add after it,
//     which only the next block reads, through its mark).
//
// The gradient nodes read the second copy. A value of block b is then live twice: in the
// forward, until its last forward reader, and from its recomputation until its last reader
// in the backward; a mark lives until its block's backward. The planner sees the two
// lifetimes as two requests, so the arena holds the marks, and one block's activations or
// the head's (logits), not both. A block that a later block reads other than through its
// mark, or whose first gradient reader runs before its last forward reader, runs once, as
// without checkpointing; a graph without marks compiles as without checkpointing.
//
// The second run goes through the same emitters with the same inputs, so it launches the
// same kernels on the same values: dropout draws its masks from (Step.Seed, the op's key),
// rotary rotates in place inside the second copy of the fused qkv projection, attention's
// forward writes fresh log-sum-exps for its backward (the first run's die with it), and the
// fusions (add + RMSNorm, the LoRA scale) are the same except where a block's first norm
// read the previous block's residual add fused: its second run reads the stored sum, which
// rmsnorm.cu normalises exactly as add_rmsnorm.cu does. The gradients are bit for bit those
// of the program without checkpointing (tested on the emulator).
//
// Emitters read the compiler's maps keyed by node (vals, lastUse, rootOf, released, pos);
// the driver switches a block's entries to its second copy when the recomputation starts
// (enter) and, while a node runs for the first time, hides the positions of gradient
// readers from the emitters that extend a buffer's life to its readers (pos).

import (
	"fmt"
	"slices"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// GradOptions are the choices of CompileGradWith.
type GradOptions struct {
	// Checkpoint keeps only the Checkpoint marks of the forward for the backward and
	// computes each block again just before its backward (activation checkpointing).
	Checkpoint bool
	// Of are the parameters whose gradients grads are, in their order: a ParamSet adds a
	// program's kept gradients only to its own parameters (ParamSet.Accumulate), and knows
	// them only from Of or from CompileGradInto.
	Of  []*tensor.Dense
	dry bool // plan the activation arena without allocating it (PlanGrad)
	// train compiles a training program whose output is not the loss (a row of the op
	// table: one op and its gradients), batch, padding and packing as in a loss program.
	train bool
	sums  *ParamSet // the set the weight-gradient GEMMs write into (CompileGradInto)
}

// CompileGradWith is CompileGrad with options.
func (d *Device) CompileGradWith(g *G.ExprGraph, loss *G.Node, grads []*G.Node, step *autograd.Step, o GradOptions) (*Program, error) {
	if o.Of != nil && len(o.Of) != len(grads) {
		return nil, fmt.Errorf("cuda: %d gradients of %d parameters (GradOptions.Of)", len(grads), len(o.Of))
	}
	p, err := d.compile(g, loss, grads, step, o)
	if err != nil {
		return nil, err
	}
	p.of = slices.Clone(o.Of)
	return p, nil
}

// recompute is the schedule of a program with checkpointing.
type recompute struct {
	order  []*G.Node
	block  []int  // per entry: the block it computes again, or -1 (the node's own run)
	starts []bool // per entry: the first of its block's recomputation
	// need: the nodes computed twice, with their block; blocks lists them in order
	need   map[*G.Node]int
	blocks [][]*G.Node
	// pos (the compiler's pos while a node runs for the second time, or a gradient node)
	// and first (forward nodes' first runs only, while one of them runs)
	pos, first map[*G.Node]int
	again      map[*G.Node]int // the second run's place
	lastAgain  map[*G.Node]int // the last reader of the second copy's buffer
	static     map[*G.Node]*G.Node
	reads      []bufferRead
}

// bufferRead is a node's input buffer and the place that reads it, checked against the
// buffer's planned lifetime.
type bufferRead struct {
	buf *Buffer
	at  int
	who *G.Node
}

// planRecompute finds the blocks, what of them to compute again and where, and returns the
// schedule; lastUse and pos become the schedule's.
func (c *compiler) planRecompute() ([]*G.Node, error) {
	sorted := c.sorted
	fwd := map[*G.Node]bool{c.out: true} // the loss and everything it reads
	for i := len(sorted) - 1; i >= 0; i-- {
		if n := sorted[i]; fwd[n] {
			for _, k := range c.kids[n] {
				fwd[k] = true
			}
		}
	}
	// level: the last mark a forward node depends on (-1: none); mark m has level m
	level, marks := map[*G.Node]int{}, 0
	for _, n := range sorted {
		if !fwd[n] {
			continue
		}
		l := -1
		for _, k := range c.kids[n] {
			if lk, ok := level[k]; ok {
				l = max(l, lk)
			}
		}
		if n.Op() != nil && isCheckpointOp(n.Op()) {
			if l != marks-1 {
				return nil, fmt.Errorf("cuda: checkpointing: mark %s does not follow mark %d", n.Name(), marks-1)
			}
			l, marks = marks, marks+1
		}
		level[n] = l
	}
	// a block's nodes: computed by an op, after mark b and before mark b+1
	inBlock := func(n *G.Node) (int, bool) {
		l, ok := level[n]
		if !ok || l < 0 || l >= marks-1 || n.Op() == nil || isCheckpointOp(n.Op()) || isConstant(n.Op()) {
			return 0, false
		}
		return l, true
	}
	// a block whose values a later block reads other than through the mark stays as it is
	whole := map[int]bool{}
	for _, n := range sorted {
		if !fwd[n] {
			continue
		}
		for _, k := range c.kids[n] {
			if lk, ok := inBlock(k); ok && level[n] > lk && !isCheckpointOp(n.Op()) {
				whole[lk] = true
			}
		}
	}
	need := map[*G.Node]int{}
	for i := len(sorted) - 1; i >= 0; i-- {
		n := sorted[i]
		_, again := need[n]
		if fwd[n] && !again {
			continue
		}
		for _, k := range c.kids[n] {
			if b, ok := inBlock(k); ok && !whole[b] && (!fwd[n] || level[n] == b) {
				need[k] = b
			}
		}
	}
	// where each block's second run starts: before its first gradient reader, which must
	// come after its last forward reader
	startAt, lastFwd := map[int]int{}, map[int]int{}
	for i, n := range sorted {
		for _, k := range c.kids[n] {
			b, ok := need[k]
			if !ok {
				continue
			}
			if fwd[n] {
				lastFwd[b] = max(lastFwd[b], i)
			} else if _, seen := startAt[b]; !seen {
				startAt[b] = i
			}
		}
	}
	for n, b := range need {
		if startAt[b] <= lastFwd[b] {
			delete(need, n)
		}
	}
	rc := &recompute{need: need, blocks: make([][]*G.Node, marks), pos: map[*G.Node]int{}, first: map[*G.Node]int{},
		again: map[*G.Node]int{}, lastAgain: map[*G.Node]int{}, static: map[*G.Node]*G.Node{}}
	for _, n := range sorted {
		if b, ok := need[n]; ok {
			rc.blocks[b] = append(rc.blocks[b], n)
		}
	}
	for i, n := range sorted {
		for b, nodes := range rc.blocks {
			if len(nodes) == 0 || startAt[b] != i {
				continue
			}
			for j, m := range nodes {
				rc.again[m] = len(rc.order)
				rc.order, rc.block, rc.starts = append(rc.order, m), append(rc.block, b), append(rc.starts, j == 0)
			}
		}
		rc.pos[n] = len(rc.order)
		if fwd[n] {
			rc.first[n] = len(rc.order)
		}
		rc.order, rc.block, rc.starts = append(rc.order, n), append(rc.block, -1), append(rc.starts, false)
	}
	// lifetimes in the schedule: a second run and a gradient node read the second copy of
	// what is computed twice, the first run of a node the first copy
	clear(c.lastUse)
	for at, n := range rc.order {
		for j, k := range c.kids[n] {
			if c.readsOperandsOnly(n, j) {
				continue
			}
			r := c.root(k)
			_, twice := need[k]
			_, rootTwice := need[r]
			if twice && rootTwice && (rc.block[at] >= 0 || !fwd[n]) {
				rc.lastAgain[r] = at
			} else {
				c.lastUse[r] = at
			}
		}
	}
	c.lastUse[c.out] = len(rc.order)
	for _, k := range c.keep {
		c.lastUse[c.root(k)] = len(rc.order)
	}
	for n, r := range c.rootOf {
		rc.static[n] = r
	}
	c.pos, c.rc = rc.pos, rc
	return rc.order, nil
}

// enter prepares the compiler for schedule entry i: at the start of a block's second run
// its nodes' first copies must be dead, and their maps entries become the second copy's.
func (c *compiler) enter(i int) error {
	rc := c.rc
	if rc == nil {
		return nil
	}
	if b := rc.block[i]; b >= 0 && rc.starts[i] {
		for _, n := range rc.blocks[b] {
			v := c.vals[n]
			if v != nil && !v.param && v.lazy == 0 && v.root == n && !c.released[n] {
				return fmt.Errorf("cuda: checkpointing: %s of block %d is still live when the block is computed again", n.Name(), b)
			}
			delete(c.vals, n)
			delete(c.released, n)
			if r, ok := rc.static[n]; ok {
				c.rootOf[n] = r
			} else {
				delete(c.rootOf, n)
			}
			rc.pos[n] = rc.again[n]
			c.lastUse[n] = rc.lastAgain[n]
		}
	}
	c.pos = rc.pos
	if _, twice := rc.need[c.cur]; twice && rc.block[i] < 0 {
		c.pos = rc.first // the gradient nodes read the second copy
	}
	return nil
}

// leave ends schedule entry i, whose launches start at index from: the first run of an
// attention computed again frees its log-sum-exps (the backward reads the second run's), a
// second run's launches are named so, and the entry's input buffers are noted for
// checkReads.
func (c *compiler) leave(i int, in []*value, from int) {
	rc, n, p := c.rc, c.cur, c.p
	if rc == nil {
		return
	}
	_, twice := rc.need[n]
	if o, ok := n.Op().(*autograd.AttentionOp); ok && twice && rc.block[i] < 0 {
		if s, ok := c.attn[o]; ok {
			c.pl.put(s.lse)
			if s.ops != nil {
				c.pl.put(s.ops)
			}
		}
	}
	if rc.block[i] >= 0 {
		for j := from; j < len(p.ins); j++ {
			p.names[j] += " [recomputed]"
			p.kinds[j] += " [recomputed]"
		}
		p.Recomputed += len(p.ins) - from
	}
	for j, v := range in {
		if v != nil && v.buf != nil && !v.param && !c.readsOperandsOnly(n, j) && !c.drawnAgain(n, j) {
			rc.reads = append(rc.reads, bufferRead{buf: v.buf, at: i, who: n})
		}
	}
}

// checkReads verifies that every input buffer a node read is live, by the plan, where the
// node runs (a schedule whose lifetimes went wrong would otherwise read reused bytes).
func (c *compiler) checkReads() error {
	if c.rc == nil {
		return nil
	}
	for _, r := range c.rc.reads {
		j, ok := c.pl.index[r.buf]
		if !ok {
			continue
		}
		q := c.pl.reqs[j]
		if r.at < q.First || q.Last >= 0 && r.at > q.Last {
			return fmt.Errorf("cuda: checkpointing: %s reads a buffer planned for nodes %d-%d at node %d", r.who.Name(), q.First, q.Last, r.at)
		}
	}
	return nil
}

// checkpoint is a Checkpoint mark: a view of its input. A norm reading it may absorb the
// residual add before it (fuseResidualAdd), as it would read the add itself.
func (c *compiler) checkpoint(n *G.Node, in []*value) (bool, error) {
	x := in[0]
	if x.lazy != 0 || x.param || x.root != c.root(c.kids[n][0]) {
		return false, fmt.Errorf("cuda: %s of a value the GPU executor does not own", c.what())
	}
	v := *x
	c.vals[n] = &v
	if la := c.lastAdd; la.node == c.kids[n][0] && la.index == len(c.p.ins)-1 {
		c.lastAdd.node = n
	}
	return true, nil
}

// isCheckpointOp reports a block boundary of a training graph (autograd.Checkpoint).
func isCheckpointOp(op G.Op) bool {
	_, ok := op.(*autograd.CheckpointOp)
	return ok
}
