//go:build qtcuda || cudaemu

package cuda

// The executor: a gorgonia graph of autograd's ops compiled into a list of kernel
// launches on one GPU. Compile runs a plan pass (topological order, every node's inputs and
// readers, views, each buffer's last reader), then hands every node to the emitter
// registered for its op type (emitters), which places its value and appends its launches;
// parameters are uploaded once (bf16, shared between the programs of one Device);
// activations get buffers planned from the graph's liveness (planner), so a buffer is reused
// as soon as the last node reading it has run, and a run allocates nothing. SplitHeads
// becomes a view (offset and row stride into the fused qkv projection), the residual adds
// run in place, and five fusions have names: "add + RMSNorm" (fuseResidualAdd), "rotary +
// KV-cache append" (deferIntoAttention), "up and gate projections + SwiGLU"
// (deferIntoSwiGLU), in loss programs "lm_head + cross-entropy by chunks"
// (deferIntoChunkLoss, chunkloss.go) and, in gradient programs, "input gradient + add" (a
// projection's input gradient GEMM with beta 1 into the other addend of the sum that reads
// it: deferIntoAdd, gradx_add.go). The KV cache of the Step lives on the device in bf16. A new op is one
// emitter and one row of emitters.
//
// Inference graphs (batch 1, no padding mask, a KV cache) and loss programs (loss.go:
// the forward of a training graph, a batch with padding and packing, dropout, LoRA branches);
// no gradients yet. The projections must be bf16 (or float32, rounded to bf16 at upload) without LoRA (merge
// adapters first: qwen-tune merge), or GPTQ layers (Int4Linear: packed words uploaded once,
// gemv_int4 for one row, dequantized to bf16 scratch for the GEMM of several rows).

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// deviceCache is a KVCache's contents on the device: per layer bf16 [max, width].
type deviceCache struct {
	max, width int
	k, v       []*Buffer
}

func (c *deviceCache) free(d *Device) {
	for l := range c.k {
		d.Free(c.k[l])
		d.Free(c.v[l])
	}
}

// cacheFor returns c's device storage, growing it (contents kept) to c.Max positions.
func (d *Device) cacheFor(c *autograd.KVCache) (*deviceCache, error) {
	if c.Batch != 1 {
		return nil, fmt.Errorf("cuda: the GPU executor runs batch 1 (KV cache of %d rows)", c.Batch)
	}
	dc := d.caches[c]
	if dc != nil && dc.max >= c.Max {
		return dc, nil
	}
	width := c.Heads * c.HeadDim
	next := &deviceCache{max: c.Max, width: width, k: make([]*Buffer, len(c.K)), v: make([]*Buffer, len(c.K))}
	for l := range next.k {
		for _, b := range []**Buffer{&next.k[l], &next.v[l]} {
			var err error
			if *b, err = d.Alloc(int64(c.Max*width*2), fmt.Sprintf("KV cache, layer %d (%d positions)", l, c.Max)); err != nil {
				next.free(d)
				return nil, err
			}
		}
		if dc != nil {
			n := int64(dc.max * width * 2)
			if err := cudaErr("cuMemcpyDtoD(KV cache)", d.drv.memcpyDtoD(next.k[l].Ptr, dc.k[l].Ptr, n)); err != nil {
				return nil, err
			}
			if err := cudaErr("cuMemcpyDtoD(KV cache)", d.drv.memcpyDtoD(next.v[l].Ptr, dc.v[l].Ptr, n)); err != nil {
				return nil, err
			}
		}
	}
	if dc != nil {
		dc.free(d)
	}
	d.caches[c] = next
	return next, nil
}

// ReleaseCache frees c's device storage.
func (d *Device) ReleaseCache(c *autograd.KVCache) {
	if dc := d.caches[c]; dc != nil {
		dc.free(d)
		delete(d.caches, c)
	}
}

// weight uploads a parameter once per Device (per tensor): bf16 as is, float32 rounded to
// bf16.
func (d *Device) weight(n *G.Node) (*Buffer, error) {
	v, ok := n.Value().(*tensor.Dense)
	if !ok || v.Size() == 0 {
		return nil, fmt.Errorf("cuda: parameter %s has no dense value", n.Name())
	}
	key := v
	if b := d.weights[key]; b != nil {
		return b, nil
	}
	var b *Buffer
	var err error
	switch data := v.Data().(type) {
	case []uint16:
		b, err = Upload(d, data, n.Name())
	case []float32:
		bf := make([]uint16, len(data))
		for i, f := range data {
			bf[i] = bf16Round(f)
		}
		b, err = Upload(d, bf, n.Name())
	default:
		return nil, fmt.Errorf("cuda: parameter %s of type %v cannot run on the GPU", n.Name(), v.Dtype())
	}
	if err != nil {
		return nil, err
	}
	d.weights[key] = b
	return b, nil
}

// ReleaseWeights frees every uploaded parameter, GPTQ layers included, but the bf16 weights
// of a live ParamSet (its updates write them; they are freed here after its Close).
func (d *Device) ReleaseWeights() {
	for k, b := range d.weights {
		if d.trained[k] != nil {
			continue
		}
		d.Free(b)
		delete(d.weights, k)
	}
	for k, w := range d.int4 {
		w.Free(d)
		delete(d.int4, k)
	}
}

func bf16Round(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

// value is where a node's result lives: rows of cols elements (float32, or bf16 when bf16),
// stride elements apart, starting off bytes into buf. A lazy value has no launch of its
// own: its consumer fuses it (a rotary of q or k into the KV-cache append, an up or gate
// projection into the fused SwiGLU GEMV).
type value struct {
	buf        *Buffer
	off        int64
	rows, cols int
	stride     int
	bf16       bool
	root       *G.Node // the node that owns buf (itself unless a view)
	param      bool
	lazy       int
	x, w       *value // a lazy projection's input and weight
	// parts, for a gradient of the fused qkv projection, are the parts (bit i: q, k, v) its
	// buffer holds so far; 0 for an ordinary value
	parts uint8
	// set, for a parameter a ParamSet keeps in float32 only, is that set: buf holds its
	// values, which a GEMM rounds to bf16 where it reads them (weightBF16)
	set *ParamSet
}

const (
	lazyRotary = 1 + iota
	lazyLinear
	lazyLogits  // lm_head's logits, computed by chunks inside the loss (chunkloss.go)
	lazyColumns // PlaceColumns, deferred into the add that reads it (embed_grad.go)
	lazyGradX   // a projection's input gradient, computed by the add that reads it (gradx_add.go)
)

func (v value) ptr() *Buffer {
	return &Buffer{Ptr: v.buf.Ptr + devPtr(v.off), Bytes: v.buf.Bytes - v.off}
}

// Program is a compiled graph: run it after updating its Step.
type Program struct {
	d    *Device
	step *autograd.Step
	// loss is set for a program whose output is the loss of a training graph (see
	// loss.go): its Step has labels and no KV cache; keep are the values Grads reads.
	loss    *lossProgram
	keep    []value
	into    *gradInto       // where the kept gradients go when a ParamSet trains them (optim.go)
	of      []*tensor.Dense // the parameters whose gradients keep are (GradOptions.Of), or nil
	ins     []func() error
	names   []string
	kinds   []string // op and output shape, for Profile
	out     value
	owned   []*Buffer
	arena   *Buffer   // the activations' arena (nil when empty), among owned
	scratch []*Buffer // scratch outside the arena (scratchFor), among owned
	lossOut bool      // the output is the loss (a training program's may be another value)
	ids     *Buffer   // [N] int32
	base    *Buffer   // [1] float64
	pos     *Buffer   // [1] int32: the first new position (Step.Past), read by the decode kernels
	// invFreq [dim/2] is InvFreq(freqBase, dim), refreshed when the step's rotary base changes
	invFreq  *Buffer
	freqBase float64
	freqDim  int
	idsBuf   []int32
	// a one-token program replays its launches as a CUDA graph, captured for one cache
	// allocation (cache growth captures again)
	graphable, hasAttention bool
	parts                   *DecodeParts
	graph                   *cudaGraph
	graphKey                [2]any
	// GraphErr is why this program runs without a CUDA graph, if capture failed.
	GraphErr error
	// Graphed counts runs replayed from a CUDA graph.
	Graphed int

	logits                []float32
	sampleOut, work, seen *Buffer
	seenHost              []bool
	seenIDs               []int
	Launches              int   // kernel launches per run
	Recomputed            int   // of them, those computing a block's forward again (checkpointing)
	activations           int64 // bytes of the arena of every activation and scratch buffer
	peak                  ArenaPeak
	buffers               []LiveBuffer // of a dry plan: every arena buffer
	entries               []string     // of a dry plan: the schedule's entries
}

// planner records the activation buffers of a program as Compile asks for them, each with
// the node that first writes it (at, when asked) and the node that reads it last (at, when
// put back; the program's end if never), then places them all in one arena (PlanArena):
// buffers whose lifetimes are disjoint share bytes. The Buffers it hands out get their
// addresses in place once the arena exists; the launches read them only when they run.
type planner struct {
	at    int // the node being compiled
	reqs  []autograd.ArenaRequest
	bufs  []*Buffer
	index map[*Buffer]int
	arena *Buffer
	size  int64 // the arena's planned size
	dry   bool  // plan the arena without allocating it (Device.PlanGrad)
	// owner is, per buffer, the nodes whose values it holds in turn (none: scratch of the
	// node at its First); cur is the node of each schedule entry, again whether it runs for
	// the second time
	owner [][]*G.Node
	cur   []*G.Node
	again []bool
	peak  ArenaPeak // of a dry plan
}

func (p *planner) get(bytes int64) *Buffer {
	b := &Buffer{Bytes: bytes}
	p.index[b] = len(p.reqs)
	p.reqs = append(p.reqs, autograd.ArenaRequest{Bytes: bytes, First: p.at, Last: -1})
	p.bufs = append(p.bufs, b)
	p.owner = append(p.owner, nil)
	return b
}

// put ends b's lifetime at the current node.
func (p *planner) put(b *Buffer) {
	if i, ok := p.index[b]; ok {
		p.reqs[i].Last = p.at
	}
}

// touch extends b's lifetime to the current node (a launch moved later reads it).
func (p *planner) touch(b *Buffer) {
	if i, ok := p.index[b]; ok && p.reqs[i].Last >= 0 {
		p.reqs[i].Last = max(p.reqs[i].Last, p.at)
	}
}

// place allocates the arena and gives every buffer its address; buffers never put back
// live to node last.
func (p *planner) place(d *Device, last int) error {
	for i := range p.reqs {
		if p.reqs[i].Last < 0 {
			p.reqs[i].Last = last
		}
	}
	offsets, size := autograd.PlanArena(p.reqs, autograd.ArenaAlign)
	if err := autograd.CheckArena(p.reqs, offsets, size, autograd.ArenaAlign); err != nil {
		return err
	}
	p.size = size
	if p.dry {
		p.peak = p.peakOf()
	}
	if size == 0 || p.dry {
		return nil
	}
	var err error
	if p.arena, err = d.Alloc(size, fmt.Sprintf("activations (%d buffers planned in one arena)", len(p.reqs))); err != nil {
		return err
	}
	for i, b := range p.bufs {
		b.Ptr = p.arena.Ptr + devPtr(offsets[i])
	}
	return nil
}

// compiler is the state of one Compile: the plan of the graph (order, readers, liveness,
// views), the values placed so far, the activation planner and the program being built.
type compiler struct {
	d      *Device
	step   *autograd.Step
	out    *G.Node
	train  bool // a training program whose output is not the loss (GradOptions.train)
	sorted []*G.Node
	pos    map[*G.Node]int       // a node's place in sorted
	kids   map[*G.Node][]*G.Node // a node's inputs
	users  map[*G.Node][]*G.Node // the nodes reading it
	vals   map[*G.Node]*value
	// lastUse is, for a buffer's owner, the place of the last node reading it or its views;
	// rootOf maps a view (and a fused, deferred node) to the owner of what it reads.
	lastUse  map[*G.Node]int
	rootOf   map[*G.Node]*G.Node
	released map[*G.Node]bool
	pl       *planner
	p        *Program
	i        int     // the place of the node being compiled
	cur      *G.Node // the node being compiled
	lastAdd  addInfo // the last residual add, which the next RMSNorm may absorb
	scale    float32 // attention's 1/sqrt(head dim)
	// of gradient programs (grad.go): the nodes kept for Grads, the graph's constants,
	// what a forward leaves its backward, and the nodes an earlier launch computed
	keep        []*G.Node
	consts      map[*G.Node]float64
	ceLSE       map[*autograd.CrossEntropyOp]*Buffer
	attn        map[*autograd.AttentionOp]attnSaved
	precomputed map[*G.Node]bool
	// rc is the schedule of a program with activation checkpointing (recompute.go)
	rc     *recompute
	inputs map[*G.Node]*Buffer    // device-resident inputs (compileWith)
	again  map[*G.Node]*dropAgain // dropouts their weight gradients draw again (dropout_again.go)
	sums   *ParamSet              // the set whose sums the weight-gradient GEMMs write (CompileGradInto)
}

// attnSaved is what attention's forward leaves its backward: the rows' log-sum-exps and
// the shape of its scratch (attnScratchFor).
type attnSaved struct {
	lse           *Buffer
	ops           *Buffer // the rows' bf16 q, k and v, when kept for the backward (attnKeepsOperands)
	t, heads, dim int
}

type addInfo struct {
	node  *G.Node
	index int
	x, r  *value
}

// emitter compiles node n, whose inputs are in, into the program: it places n's value and
// emits its launches. view reports that n's value only names (part of) another one, or is
// deferred into its reader (a fusion): n then releases no input.
type emitter func(c *compiler, n *G.Node, in []*value) (view bool, err error)

// emitters are the compilers of autograd's ops, by op type; gorgonia's element-wise add
// (autograd.IsAdd) is the one foreign op the executor runs.
var emitters = map[reflect.Type]emitter{
	reflect.TypeOf(&autograd.GatherOp{}):        (*compiler).gather,
	reflect.TypeOf(&autograd.RMSNormOp{}):       (*compiler).rmsNorm,
	reflect.TypeOf(&autograd.LinearOp{}):        (*compiler).linear,
	reflect.TypeOf(&autograd.SplitHeadsOp{}):    (*compiler).splitHeads,
	reflect.TypeOf(&autograd.RotaryOp{}):        (*compiler).rotary,
	reflect.TypeOf(&autograd.AttentionOp{}):     (*compiler).attention,
	reflect.TypeOf(&autograd.SwiGLUOp{}):        (*compiler).swiGLU,
	reflect.TypeOf(&autograd.Int4Op{}):          (*compiler).int4,
	reflect.TypeOf(&autograd.DropoutOp{}):       (*compiler).dropout,
	reflect.TypeOf(&autograd.CrossEntropyOp{}):  (*compiler).crossEntropy,
	reflect.TypeOf(&autograd.LinearGradXOp{}):   (*compiler).linearGradX,
	reflect.TypeOf(&autograd.LinearGradWOp{}):   (*compiler).linearGradW,
	reflect.TypeOf(&autograd.RMSNormGradXOp{}):  (*compiler).rmsNormGradX,
	reflect.TypeOf(&autograd.AttentionGradOp{}): (*compiler).attentionGrad,
	reflect.TypeOf(&autograd.PickOp{}):          (*compiler).pick,
	reflect.TypeOf(&autograd.MergePartOp{}):     (*compiler).mergePart,
	reflect.TypeOf(&autograd.ScatterOp{}):       (*compiler).scatter,
	reflect.TypeOf(&autograd.ColumnsOp{}):       (*compiler).columns,
	reflect.TypeOf(&autograd.CheckpointOp{}):    (*compiler).checkpoint,
	reflect.TypeOf(&autograd.CaptureOp{}):       (*compiler).capture,
}

// Compile turns the graph that computes out into a Program reading step: a plan pass, then
// every node through the emitter of its op type, then the arena.
func (d *Device) Compile(g *G.ExprGraph, out *G.Node, step *autograd.Step) (*Program, error) {
	return d.compile(g, out, nil, step, GradOptions{})
}

// compile is Compile keeping the nodes keep for Grads, with o's choices (recompute.go).
func (d *Device) compile(g *G.ExprGraph, out *G.Node, keep []*G.Node, step *autograd.Step, o GradOptions) (prog *Program, err error) {
	return d.compileWith(g, out, keep, step, o, nil)
}

// compileWith is compile with inputs: nodes without a value whose data is already on the
// device (float32, row-major: [rows, cols], or [B, T, H, D] as [B*T, H*D]), read in place and
// never written.
func (d *Device) compileWith(g *G.ExprGraph, out *G.Node, keep []*G.Node, step *autograd.Step, o GradOptions, inputs map[*G.Node]*Buffer) (prog *Program, err error) {
	c := &compiler{d: d, step: step, out: out, keep: keep, p: &Program{d: d, step: step}, pl: &planner{index: map[*Buffer]int{}, dry: o.dry},
		consts: map[*G.Node]float64{}, ceLSE: map[*autograd.CrossEntropyOp]*Buffer{}, attn: map[*autograd.AttentionOp]attnSaved{}, precomputed: map[*G.Node]bool{}, inputs: inputs, sums: o.sums, train: o.train, again: map[*G.Node]*dropAgain{}}
	p := c.p
	defer func() {
		if err != nil {
			for _, b := range p.owned {
				d.Free(b)
			}
			if c.pl.arena != nil {
				d.Free(c.pl.arena)
			}
			if p.loss != nil {
				for _, sc := range p.loss.scratch {
					sc.Free(d)
				}
			}
		}
	}()
	if err := c.plan(g); err != nil {
		return nil, err
	}
	order := c.sorted
	if o.Checkpoint {
		if order, err = c.planRecompute(); err != nil {
			return nil, err
		}
	}
	if err := c.stepBuffers(); err != nil {
		return nil, err
	}
	for i, n := range order {
		c.i, c.pl.at, c.cur = i, i, n
		c.pl.cur = append(c.pl.cur, n)
		c.pl.again = append(c.pl.again, c.rc != nil && c.rc.block[i] >= 0)
		if err := c.enter(i); err != nil {
			return nil, err
		}
		if n.Op() == nil {
			if err := c.parameter(n); err != nil {
				return nil, err
			}
			continue
		}
		if isConstant(n.Op()) {
			if err := c.constant(n); err != nil {
				return nil, err
			}
			continue
		}
		if c.precomputed[n] { // its value came with an earlier node's launch
			c.release(n)
			continue
		}
		in := make([]*value, len(c.kids[n]))
		for j, k := range c.kids[n] {
			if in[j] = c.vals[k]; in[j] == nil {
				return nil, fmt.Errorf("cuda: node %s reads %s, which the GPU executor did not place", n.Name(), k.Name())
			}
		}
		emit, ok := emitters[reflect.TypeOf(n.Op())]
		if autograd.IsAdd(n.Op()) {
			emit, ok = (*compiler).add, true
		}
		if !ok {
			return nil, fmt.Errorf("cuda: %s (%T) has no GPU kernel", n.Op(), n.Op())
		}
		launches := len(p.ins)
		view, err := emit(c, n, in)
		if err != nil {
			return nil, err
		}
		c.leave(i, in, launches)
		if !view {
			c.release(n)
		}
	}
	ov := c.vals[out]
	if ov == nil || ov.param || ov.lazy != 0 || ov.bf16 {
		return nil, fmt.Errorf("cuda: the graph's output %s was not computed", out.Name())
	}
	p.out = *ov
	if o, ok := out.Op().(*autograd.CrossEntropyOp); ok && !o.Backward() {
		p.lossOut = true
	}
	for _, k := range keep {
		v := c.vals[k]
		if v == nil || v.param || v.lazy != 0 || v.bf16 || v.parts != 0 {
			return nil, fmt.Errorf("cuda: the kept node %s was not computed as a whole float32 value", k.Name())
		}
		p.keep = append(p.keep, *v)
	}
	if err := c.checkReads(); err != nil {
		return nil, err
	}
	if err := c.pl.place(d, len(order)); err != nil {
		return nil, err
	}
	if c.pl.arena != nil {
		p.owned = append(p.owned, c.pl.arena)
		p.arena = c.pl.arena
	}
	p.activations, p.peak = c.pl.size, c.pl.peak
	if o.dry {
		p.buffers, p.entries = c.pl.buffers(), c.pl.entries()
	}
	p.Launches = len(p.ins)
	return p, nil
}

// plan orders the graph, records every node's inputs and readers, makes SplitHeads a view of
// its input and finds each buffer's last reader.
func (c *compiler) plan(g *G.ExprGraph) error {
	sorted, err := G.Sort(g)
	if err != nil {
		return err
	}
	slices.Reverse(sorted)
	c.sorted = sorted
	c.pos, c.kids, c.users = map[*G.Node]int{}, map[*G.Node][]*G.Node{}, map[*G.Node][]*G.Node{}
	c.vals, c.lastUse, c.rootOf, c.released = map[*G.Node]*value{}, map[*G.Node]int{}, map[*G.Node]*G.Node{}, map[*G.Node]bool{}
	for i, n := range sorted {
		c.pos[n] = i
		c.kids[n] = children(g, n)
		for _, k := range c.kids[n] {
			c.users[k] = append(c.users[k], n)
		}
	}
	for i, n := range sorted {
		if _, ok := n.Op().(*autograd.SplitHeadsOp); ok || isCheckpointOp(n.Op()) {
			c.rootOf[n] = c.root(c.kids[n][0])
		}
		for j, k := range c.kids[n] {
			if !c.readsOperandsOnly(n, j) {
				c.lastUse[c.root(k)] = i
			}
		}
	}
	c.lastUse[c.out] = len(sorted)
	for _, k := range c.keep {
		c.lastUse[c.root(k)] = len(sorted)
	}
	return nil
}

// isConstant reports gorgonia's scalar constants (the upstream gradient of a loss).
func isConstant(op G.Op) bool { return fmt.Sprintf("%T", op) == "gorgonia.constantScalar" }

// stepBuffers allocates the buffers the Step's host data goes to before a run.
func (c *compiler) stepBuffers() error {
	d, p, step := c.d, c.p, c.step
	var err error
	if p.ids, err = d.Alloc(int64(max(step.Batch*step.Seq, 1))*4, "token ids"); err != nil {
		return err
	}
	p.owned = append(p.owned, p.ids)
	if p.base, err = d.Alloc(8, "rotary base"); err != nil {
		return err
	}
	p.owned = append(p.owned, p.base)
	if p.pos, err = d.Alloc(4, "position"); err != nil {
		return err
	}
	p.owned = append(p.owned, p.pos)
	p.graphable = step.Batch == 1 && step.Seq == 1
	if c.isLoss() {
		return c.lossBuffers()
	}
	return nil
}

// root is the owner of n's buffer (n itself unless a view).
func (c *compiler) root(n *G.Node) *G.Node {
	if r, ok := c.rootOf[n]; ok {
		return r
	}
	return n
}

// isLinear reports a projection without a scale (not a LoRA branch).
func isLinear(n *G.Node) (*autograd.LinearOp, bool) {
	o, ok := n.Op().(*autograd.LinearOp)
	return o, ok && (o.Scale() == 1)
}

// rowsOf is the number of rows of a [rows, cols] or [B, T, ...] value.
func rowsOf(n *G.Node) int {
	s := n.Shape()
	if len(s) == 2 {
		return s[0]
	}
	return s[0] * s[1]
}

// feedsGEMMs: every reader of n is a projection (dense or GPTQ) taking it as input with more
// than one row, so n can be produced in bf16 directly (no float32 copy, no conversion pass).
func (c *compiler) feedsGEMMs(n *G.Node) bool {
	if n == c.out || rowsOf(n) < 2 || len(c.users[n]) == 0 {
		return false
	}
	for _, u := range c.users[n] {
		_, dense := isLinear(u)
		o4, packed := u.Op().(*autograd.Int4Op)
		if !dense && !(packed && !o4.Backward()) || c.kids[u][0] != n {
			return false
		}
	}
	return true
}

// unbiased: n is a projection without a bias (a GPTQ layer's all-zero bias is none).
func unbiased(n *G.Node) bool {
	if o, ok := isLinear(n); ok {
		return !o.HasBias()
	}
	o4, ok := n.Op().(*autograd.Int4Op)
	return ok && !o4.Weight().HasBias()
}

// feedsSwiGLU: n's only reader is a SwiGLU whose result feeds GEMMs (prefill) and whose
// inputs are both projections without a bias: the up and gate GEMMs then write bf16 as
// transformers does, halving the MLP's largest buffers.
func (c *compiler) feedsSwiGLU(n *G.Node) bool {
	if rowsOf(n) < 2 || len(c.users[n]) != 1 {
		return false
	}
	sw, ok := c.users[n][0].Op().(*autograd.SwiGLUOp)
	if !ok || sw.Grad() != 0 || !c.feedsGEMMs(c.users[n][0]) {
		return false
	}
	for _, k := range c.kids[c.users[n][0]] {
		if !unbiased(k) {
			return false
		}
	}
	return true
}

// gemmRows is the launches of a projection of several rows: x converted to bf16 (unless it
// is bf16 already) into scratch of this node, the bf16 weight W [nOut, k] from weight (a
// parameter, or a GPTQ layer dequantized), one cuBLAS GEMM into y (float32 or bf16), then
// bias (nil: none).
func (c *compiler) gemmRows(x, y *value, nOut int, weight func() (*Buffer, error), bias func() error) func() error {
	d := c.d
	rows, k, stride, xb := x.rows, x.cols, x.stride, x.buf
	conv := !x.bf16
	if conv {
		xb = c.pl.get(int64(rows*k) * 2)
		c.pl.put(xb) // only used inside this node's launches
	}
	return func() error {
		if conv {
			if err := d.ToBF16Rows(xb, x.ptr(), rows, k, stride); err != nil {
				return err
			}
		}
		w, err := weight()
		if err != nil {
			return err
		}
		if y.bf16 {
			return d.GemmBF16Out(y.buf, xb, w, rows, nOut, k, nOut)
		}
		if err := d.GemmBF16(y.buf, xb, w, rows, nOut, k, nOut, false); err != nil {
			return err
		}
		if bias != nil {
			return bias()
		}
		return nil
	}
}

// alloc places n's value in a new activation buffer of rows x cols (bf16 when bf).
func (c *compiler) alloc(n *G.Node, rows, cols int, bf bool) *value {
	elem := int64(4)
	if bf {
		elem = 2
	}
	v := &value{buf: c.pl.get(int64(rows*cols) * elem), rows: rows, cols: cols, stride: cols, root: n, bf16: bf}
	c.pl.own(v.buf, n)
	c.vals[n] = v
	return v
}

// dies reports whether input k of the current node is a float32 activation nobody reads
// later, whose buffer the node may overwrite.
func (c *compiler) dies(k *G.Node) bool {
	v := c.vals[k]
	return v != nil && !v.param && v.lazy == 0 && !v.bf16 && v.off == 0 && v.root == k && c.lastUse[k] == c.i && k != c.out
}

// inPlace makes n's result live in k's buffer.
func (c *compiler) inPlace(n, k *G.Node) *value {
	v := c.vals[k]
	c.released[k] = true // n owns the buffer now
	c.pl.own(v.buf, n)
	nv := &value{buf: v.buf, rows: v.rows, cols: v.cols, stride: v.cols, root: n}
	c.vals[n] = nv
	return nv
}

// release ends the buffers whose last reader is n.
func (c *compiler) release(n *G.Node) {
	for _, k := range c.kids[n] {
		r := c.root(k)
		if v := c.vals[r]; v != nil && !v.param && v.lazy == 0 && c.lastUse[r] == c.i && r != c.out && !c.released[r] {
			c.released[r] = true // the closures keep v.buf: later nodes may write it
			c.pl.put(v.buf)
		}
	}
}

// emit appends one instruction of the current node.
func (c *compiler) emit(f func() error) { c.emitNamed(c.what(), f) }

// emitNamed is emit with the name extended (a fused instruction says what it absorbed).
func (c *compiler) emitNamed(name string, f func() error) {
	p, n := c.p, c.cur
	p.ins = append(p.ins, f)
	p.names = append(p.names, name)
	p.kinds = append(p.kinds, fmt.Sprintf("%s -> %v", strings.TrimSuffix(name, fmt.Sprintf(" (%s)", n.Name())), n.Shape()))
}

// what names the current node as its instructions are named.
func (c *compiler) what() string { return fmt.Sprintf("%s (%s)", c.cur.Op(), c.cur.Name()) }

// parameter uploads a weight (bf16, once per Device).
func (c *compiler) parameter(n *G.Node) error {
	if b, ok := c.inputs[n]; ok { // read in place like a parameter: never released or overwritten
		rows, cols, ok := inputMatrix(n.Shape())
		if !ok {
			return fmt.Errorf("cuda: input %s of shape %v: a device input is [rows, cols] or [B, T, H, D]", n.Name(), n.Shape())
		}
		if b.Bytes < int64(rows)*int64(cols)*4 {
			return fmt.Errorf("cuda: input %s of shape %v does not fit its device buffer of %d bytes", n.Name(), n.Shape(), b.Bytes)
		}
		c.vals[n] = &value{buf: b, rows: rows, cols: cols, stride: cols, root: n, param: true}
		return nil
	}
	if n.Value() == nil {
		return fmt.Errorf("cuda: input %s has no value: the GPU executor runs graphs whose data comes from the Step", n.Name())
	}
	if key, ok := n.Value().(*tensor.Dense); ok && roundTrainedAtUse && c.d.trained[key] != nil {
		v, err := c.trainedWeight(n, key, c.d.trained[key])
		if err != nil {
			return err
		}
		if v != nil {
			c.vals[n] = v
			return nil
		}
	}
	b, err := c.d.weight(n)
	if err != nil {
		return err
	}
	s := n.Shape()
	rows, cols := 1, s[len(s)-1]
	if len(s) == 2 {
		rows = s[0]
	}
	c.vals[n] = &value{buf: b, rows: rows, cols: cols, stride: cols, bf16: true, root: n, param: true}
	return nil
}

// inputMatrix is how an input of shape s is laid out on the device: [rows, cols] as it is,
// [B, T, H, D] (heads, as SplitHeads gives them) as [B*T, H*D].
func inputMatrix(s tensor.Shape) (rows, cols int, ok bool) {
	switch len(s) {
	case 2:
		return s[0], s[1], true
	case 4:
		return s[0] * s[1], s[2] * s[3], true
	}
	return 0, 0, false
}

func (c *compiler) gather(n *G.Node, in []*value) (bool, error) {
	o, d, p := n.Op().(*autograd.GatherOp), c.d, c.p
	switch o.Kind() {
	case "Embedding":
		w := in[0]
		y := c.alloc(n, o.Rows(), w.cols, false)
		vocab, h, cnt := w.rows, w.cols, o.Rows()
		c.emit(func() error { return d.GatherBF16(y.buf, w.buf, p.ids, cnt, h, vocab) })
	case "SelectRows":
		x := in[0]
		y := c.alloc(n, o.Rows(), x.cols, false)
		c.emit(func() error {
			for b, r := range o.Index() {
				if r < 0 {
					return fmt.Errorf("cuda: SelectRows: row %d selects no position", b)
				}
				src := x.ptr().Ptr + devPtr(int64(r)*int64(x.stride)*4)
				if err := d.copyDtoD(y.buf.Ptr+devPtr(b*x.cols*4), src, int64(x.cols)*4); err != nil {
					return err
				}
			}
			return nil
		})
	case "EmbeddingRows":
		return c.gatherRows(n, in)
	default:
		return false, fmt.Errorf("cuda: %s has no GPU kernel", o.Kind())
	}
	return false, nil
}

func (c *compiler) rmsNorm(n *G.Node, in []*value) (bool, error) {
	o, d := n.Op().(*autograd.RMSNormOp), c.d
	x, w := in[0], in[1]
	if x.bf16 || x.stride != x.cols {
		return false, fmt.Errorf("cuda: RMSNorm of a bf16 or strided input")
	}
	eps := float32(o.Eps())
	bf := c.feedsGEMMs(n)
	y := c.alloc(n, x.rows, x.cols, bf)
	rows, h := x.rows, x.cols
	if la, ok := c.fuseResidualAdd(n); ok {
		c.emitNamed(c.what()+" with the residual add", func() error {
			if bf {
				return d.AddRMSNormBF16Out(y.buf, la.x.buf, la.r.ptr(), w.buf, rows, h, eps)
			}
			return d.AddRMSNormBF16(y.buf, la.x.buf, la.r.ptr(), w.buf, rows, h, eps)
		})
		return false, nil
	}
	c.emit(func() error {
		if bf {
			return d.RMSNormBF16Out(y.buf, x.ptr(), w.buf, rows, h, eps)
		}
		return d.RMSNormBF16(y.buf, x.ptr(), w.buf, rows, h, eps)
	})
	return false, nil
}

// fuseResidualAdd (fusion "add + RMSNorm"): when the norm n reads the residual add emitted
// just before it (in place into its x), that add's instruction is taken back for the norm
// to run both in one launch.
func (c *compiler) fuseResidualAdd(n *G.Node) (addInfo, bool) {
	p, la := c.p, c.lastAdd
	if la.node != c.kids[n][0] || la.index != len(p.ins)-1 {
		return la, false
	}
	p.ins, p.names, p.kinds = p.ins[:la.index], p.names[:la.index], p.kinds[:la.index]
	c.pl.touch(la.r.buf) // the add now runs here: its addend lives until here
	return la, true
}

func (c *compiler) linear(n *G.Node, in []*value) (bool, error) {
	o, d := n.Op().(*autograd.LinearOp), c.d
	scale := o.Scale()
	if scale != 1 && !c.isLoss() {
		return false, fmt.Errorf("cuda: a scaled projection (LoRA) has no GPU kernel: merge the adapter first (qwen-tune merge)")
	}
	x, w := in[0], in[1]
	var bias *value
	if len(in) == 3 {
		bias = in[2]
	}
	rows, k, nOut := x.rows, x.cols, w.rows
	if c.deferIntoChunkLoss(n, x, w, bias) {
		return true, nil
	}
	if c.deferIntoSwiGLU(n, x, w, bias) {
		return true, nil
	}
	y := c.alloc(n, rows, nOut, scale == 1 && (c.feedsGEMMs(n) || c.feedsSwiGLU(n)))
	if rows == 1 {
		if x.bf16 {
			return false, fmt.Errorf("cuda: GEMV of a bf16 input")
		}
		var bb *Buffer
		if bias != nil {
			bb = bias.buf
		}
		wb, round := c.weightBF16(w)
		c.emit(func() error {
			if err := round(); err != nil {
				return err
			}
			return d.GemvBF16(y.buf, x.ptr(), wb, bb, nOut, k)
		})
		c.scaled(y, scale)
		return false, nil
	}
	if y.bf16 && bias != nil {
		return false, fmt.Errorf("cuda: a bf16 projection output with a bias")
	}
	var addBias func() error
	if bias != nil {
		addBias = func() error { return d.BiasBF16(y.buf, bias.buf, rows, nOut) }
	}
	wb, round := c.weightBF16(w)
	c.emit(c.gemmRows(x, y, nOut, func() (*Buffer, error) { return wb, round() }, addBias))
	c.scaled(y, scale)
	return false, nil
}

// scaled multiplies a projection's float32 output by a LoRA branch's scale (nothing for 1).
func (c *compiler) scaled(y *value, scale float64) {
	if scale == 1 {
		return
	}
	d, cnt := c.d, int64(y.rows*y.cols)
	c.emitNamed(c.what()+" scaled", func() error { return d.ScaleF32(y.buf, cnt, scale) })
}

// int4 is a GPTQ layer: for one row gemv_int4 reads the packed words once (and adds the
// bias); for several, W^T is dequantized to bf16 scratch of this node (the arena gives the
// layers' scratch the same bytes, as their lifetimes never overlap) for the GEMM of dense
// weights.
func (c *compiler) int4(n *G.Node, in []*value) (bool, error) {
	o, d := n.Op().(*autograd.Int4Op), c.d
	if o.Backward() {
		return c.int4Grad(n, in)
	}
	x := in[0]
	if x.cols != o.Weight().K {
		return false, fmt.Errorf("cuda: %s: input of %d columns for %d inputs", c.what(), x.cols, o.Weight().K)
	}
	w, err := d.int4Weights(o.Weight())
	if err != nil {
		return false, err
	}
	rows, nOut := x.rows, o.Weight().N
	if rows == 1 {
		if x.bf16 {
			return false, fmt.Errorf("cuda: GEMV of a bf16 input")
		}
		if _, err := d.function("gemv_int4"); err != nil { // loaded now, not during a graph capture
			return false, err
		}
		y := c.alloc(n, 1, nOut, false)
		c.emit(func() error { return d.GemvInt4(y.buf, x.ptr(), w) })
		return false, nil
	}
	y := c.alloc(n, rows, nOut, w.Bias == nil && (c.feedsGEMMs(n) || c.feedsSwiGLU(n)))
	wt := c.pl.get(int64(nOut) * int64(o.Weight().K) * 2)
	c.pl.put(wt)
	var addBias func() error
	if w.Bias != nil {
		addBias = func() error { return d.BiasF32(y.buf, w.Bias, rows, nOut) }
	}
	c.emit(c.gemmRows(x, y, nOut, func() (*Buffer, error) { return wt, d.DequantInt4BF16(wt, w) }, addBias))
	return false, nil
}

// deferIntoSwiGLU (fusion "up and gate projections + SwiGLU"): the up or gate projection of
// a one-token step without bias, both reading the same input, runs inside the SwiGLU's GEMV;
// n gets a lazy value that the SwiGLU emitter reads.
func (c *compiler) deferIntoSwiGLU(n *G.Node, x, w, bias *value) bool {
	if x.rows != 1 || bias != nil || w.set != nil || len(c.users[n]) != 1 {
		return false
	}
	u := c.users[n][0]
	if sw, ok := u.Op().(*autograd.SwiGLUOp); !ok || sw.Grad() != 0 {
		return false
	}
	pair := c.kids[u]
	if len(pair) != 2 || pair[0] == pair[1] {
		return false
	}
	o1, ok1 := isLinear(pair[0])
	o2, ok2 := isLinear(pair[1])
	if !ok1 || o1.HasBias() || !ok2 || o2.HasBias() || c.kids[pair[0]][0] != c.kids[pair[1]][0] {
		return false
	}
	r := c.root(c.kids[n][0])
	c.vals[n] = &value{rows: 1, cols: w.rows, root: r, lazy: lazyLinear, x: x, w: w}
	c.rootOf[n] = r // its input is read where the SwiGLU runs
	c.lastUse[r] = max(c.lastUse[r], c.pos[u])
	return true
}

func (c *compiler) splitHeads(n *G.Node, in []*value) (bool, error) {
	o, x := n.Op().(*autograd.SplitHeadsOp), in[0]
	width := o.Heads() * o.HeadDim()
	c.vals[n] = &value{buf: x.buf, off: x.off + int64(o.Part()*width*4), rows: x.rows, cols: width, stride: x.stride, root: x.root}
	return true, nil
}

func (c *compiler) rotary(n *G.Node, in []*value) (bool, error) {
	if c.isLoss() {
		return c.rotaryLoss(n, in)
	}
	d, p, step, x := c.d, c.p, c.step, in[0]
	s := n.Shape() // [B, T, H, D]
	if s[0] != 1 {
		return false, fmt.Errorf("cuda: the GPU executor runs batch 1 (rotary of %v)", s)
	}
	if c.deferIntoAttention(n, x) {
		return true, nil
	}
	y := c.alloc(n, s[1], s[2]*s[3], false)
	t, heads, dim, xs := s[1], s[2], s[3], x.stride
	p.graphable = false // its position is a launch argument
	c.emit(func() error {
		if step.Positions != nil {
			return fmt.Errorf("cuda: packed positions have no GPU kernel")
		}
		return d.Rotary(y.buf, x.ptr(), p.base, 1, t, heads, dim, step.Past, xs, heads*dim)
	})
	return false, nil
}

// deferIntoAttention (fusion "rotary + KV-cache append"): a rotary of q or k read only by
// attention is applied in place where the attention appends to the KV cache; n gets a lazy
// view of its input.
func (c *compiler) deferIntoAttention(n *G.Node, x *value) bool {
	if len(c.users[n]) == 0 || x.root == c.kids[n][0] || x.bf16 {
		return false
	}
	for _, u := range c.users[n] {
		if _, ok := u.Op().(*autograd.AttentionOp); !ok {
			return false
		}
	}
	v := *x
	v.lazy = lazyRotary
	c.vals[n] = &v
	c.rootOf[n] = x.root // rotated in place where the attention runs
	for _, u := range c.users[n] {
		c.lastUse[x.root] = max(c.lastUse[x.root], c.pos[u])
	}
	return true
}

func (c *compiler) attention(n *G.Node, in []*value) (bool, error) {
	if c.isLoss() {
		return c.attentionLoss(n, in)
	}
	o, d, p, step := n.Op().(*autograd.AttentionOp), c.d, c.p, c.step
	q, k, v := in[0], in[1], in[2]
	s := c.kids[n][0].Shape() // [B, T, H, D]
	if s[0] != 1 {
		return false, fmt.Errorf("cuda: the GPU executor runs batch 1 (attention of %v)", s)
	}
	t, heads, dim := s[1], s[2], s[3]
	width := heads * dim
	fused := q.lazy == lazyRotary && k.lazy == lazyRotary && q.buf == k.buf && k.buf == v.buf && q.stride == k.stride && k.stride == v.stride
	if !fused && (q.lazy != 0 || k.lazy != 0) {
		return false, fmt.Errorf("cuda: attention of q, k and v from different buffers")
	}
	if !fused {
		p.graphable = false // the cache append takes the position as a launch argument
	}
	p.hasAttention = true
	if fused && p.invFreq == nil {
		var err error
		if p.invFreq, err = d.Alloc(int64(dim/2*4), "rotary inverse frequencies"); err != nil {
			return false, err
		}
		p.owned = append(p.owned, p.invFreq)
		p.freqDim, p.freqBase = dim, math.NaN()
	}
	bf := c.feedsGEMMs(n)
	y := c.alloc(n, t, width, bf)
	layer := o.Layer()
	c.scale = float32(1 / math.Sqrt(float64(dim)))
	pre := &prefillScratch{}
	if t > 1 {
		pre.chunk = min(t, autograd.PrefillChunk)
		pre.elems = autograd.PrefillScoreElems(heads, t)
		pre.q = c.pl.get(int64(t*width) * 2)
		pre.s = c.pl.get(pre.elems * 4)
		c.pl.put(pre.q) // scratch of this node only: later nodes may reuse it
		c.pl.put(pre.s)
	}
	sc := c.scale
	c.emit(func() error {
		st := step
		if st.Cache == nil || st.KeyMask != nil || st.Segments != nil || st.Positions != nil {
			return fmt.Errorf("cuda: the GPU executor runs attention over a KV cache without padding or packing")
		}
		dc := d.caches[st.Cache] // allocated by Run before the launches
		if fused {
			if err := d.RotaryQKV(q.buf, dc.k[layer], dc.v[layer], p.invFreq, p.pos, t, heads, dim, st.Past, q.stride, int(q.off/4), int(k.off/4), int(v.off/4), dc.max); err != nil {
				return err
			}
		} else if err := d.KVAppend(dc.k[layer], dc.v[layer], k.ptr(), v.ptr(), 1, t, width, k.stride, v.stride, dc.max, st.Past); err != nil {
			return err
		}
		if t == 1 {
			return d.AttentionDecode(y.buf, q.ptr(), dc.k[layer], dc.v[layer], p.parts, 1, heads, dim, dc.max, p.pos, sc, st.LogNSeq)
		}
		if err := d.ToBF16Rows(pre.q, q.ptr(), t, width, q.stride); err != nil {
			return err
		}
		return d.attentionPrefill(y.buf, bf, pre, dc.k[layer], dc.v[layer], heads, dim, st.Past, t, sc, st.LogNSeq)
	})
	return false, nil
}

func (c *compiler) swiGLU(n *G.Node, in []*value) (bool, error) {
	o, d := n.Op().(*autograd.SwiGLUOp), c.d
	if o.Grad() != 0 {
		return c.swiGLUGrad(n, in)
	}
	a, gt := in[0], in[1]
	if a.lazy == lazyLinear && gt.lazy == lazyLinear {
		y := c.alloc(n, 1, a.cols, false)
		x, w1, w2, rows, k := a.x, a.w, gt.w, a.cols, a.x.cols
		c.emitNamed(c.what()+" with the up and gate projections", func() error { return d.GemvSwiGLU(y.buf, x.ptr(), w1.buf, w2.buf, rows, k) })
		return false, nil
	}
	cnt := int64(a.rows * a.cols)
	if a.bf16 || gt.bf16 {
		if !a.bf16 || !gt.bf16 || !c.feedsGEMMs(n) {
			return false, fmt.Errorf("cuda: SwiGLU of bf16 inputs must feed GEMMs")
		}
		y := c.alloc(n, a.rows, a.cols, true)
		c.emit(func() error { return d.SwiGLUBF16(y.buf, a.buf, gt.buf, cnt) })
		return false, nil
	}
	var y *value
	switch {
	case c.feedsGEMMs(n):
		y = c.alloc(n, a.rows, a.cols, true)
	case c.dies(c.kids[n][0]):
		y = c.inPlace(n, c.kids[n][0])
	default:
		y = c.alloc(n, a.rows, a.cols, false)
	}
	c.emit(func() error {
		if y.bf16 {
			return d.SwiGLUBF16Out(y.buf, a.ptr(), gt.ptr(), cnt)
		}
		return d.SwiGLU(y.buf, a.ptr(), gt.ptr(), cnt)
	})
	return false, nil
}

// add is a residual add, in place into an input that dies here; it is remembered for the
// next RMSNorm to absorb (fuseResidualAdd).
func (c *compiler) add(n *G.Node, in []*value) (bool, error) {
	d := c.d
	a, b := in[0], in[1]
	if a.lazy == lazyGradX || b.lazy == lazyGradX {
		return c.addGradX(n, a, b)
	}
	if a.parts != 0 || b.parts != 0 {
		return c.addParts(n, a, b)
	}
	if a.lazy == lazyColumns || b.lazy == lazyColumns {
		return c.addColumns(n, a, b)
	}
	if a.bf16 || b.bf16 || a.stride != a.cols || b.stride != b.cols || a.rows*a.cols != b.rows*b.cols {
		return false, fmt.Errorf("cuda: add of %v and %v", c.kids[n][0].Shape(), c.kids[n][1].Shape())
	}
	cnt := int64(a.rows * a.cols)
	var y *value
	x, r := a, b
	switch {
	case c.dies(c.kids[n][0]):
		y = c.inPlace(n, c.kids[n][0])
	case c.dies(c.kids[n][1]):
		y = c.inPlace(n, c.kids[n][1])
		x, r = b, a
	default:
		y = c.alloc(n, a.rows, a.cols, false)
	}
	c.emit(func() error { return d.Add(y.buf, a.ptr(), b.ptr(), cnt) })
	if y.buf == x.buf {
		c.lastAdd = addInfo{node: n, index: len(c.p.ins) - 1, x: x, r: r}
	}
	return false, nil
}

type prefillScratch struct {
	q, s  *Buffer
	chunk int
	elems int64 // capacity of s in elements
}

// attentionPrefill is causal attention of t new queries (bf16 [t, heads*dim]) over the
// cache's past+t keys: per chunk of queries, scores by one batched GEMM (tensor cores, fp32
// out), causal softmax with LogN in fp32 to bf16 probabilities (in place), and their product with the
// values by a second batched GEMM into out [t, heads*dim] (float32, or bf16 when outBF16).
func (d *Device) attentionPrefill(out *Buffer, outBF16 bool, pre *prefillScratch, kc, vc *Buffer, heads, dim, past, t int, scale float32, lognSeq int) error {
	width := heads * dim
	keys := past + t
	elem, ct := int64(4), dtypeF32
	if outBF16 {
		elem, ct = 2, dtypeBF16
	}
	for t0 := 0; t0 < t; {
		l := past + t0 + 1 // keys visible to the chunk's first query
		tc := min(pre.chunk, t-t0)
		for tc > 1 && int64(heads)*int64(tc)*int64(l+tc-1) > pre.elems {
			tc /= 2
		}
		l += tc - 1
		if int64(heads)*int64(tc)*int64(l) > pre.elems {
			return fmt.Errorf("cuda: attention scratch of %d elements is too small for %d keys", pre.elems, l)
		}
		// scores^T per head: [l, tc] = K_h [l, dim] . q_h^T
		if err := d.gemmBatched(blasOpT, blasOpN, l, tc, dim, kc, dtypeBF16, width, int64(dim),
			pre.q.Slice(int64(t0*width*2), int64((t-t0)*width*2)), dtypeBF16, width, int64(dim),
			0, pre.s, dtypeF32, l, int64(tc*l), heads); err != nil {
			return err
		}
		if err := d.CausalSoftmax(pre.s, heads, tc, l, past+t0, scale, lognSeq, keys); err != nil {
			return err
		}
		// out^T per head: [dim, tc] = V_h^T [dim, l] . p_h^T [l, tc] (p rows 2l bf16 apart)
		if err := d.gemmBatched(blasOpN, blasOpN, dim, tc, l, vc, dtypeBF16, width, int64(dim),
			pre.s, dtypeBF16, 2*l, int64(tc*2*l),
			0, out.Slice(int64(t0*width)*elem, int64((t-t0)*width)*elem), ct, width, int64(dim), heads); err != nil {
			return err
		}
		t0 += tc
	}
	return nil
}

// Run executes the program on its Step's current contents: the step's ids, rotary base and
// position are uploaded, the KV cache (and decode scratch) allocated or grown, then the
// launches run, replayed from a CUDA graph for a one-token program.
func (p *Program) Run() error {
	if p.loss != nil {
		return p.runLoss()
	}
	st, d := p.step, p.d
	if st.Batch != 1 {
		return fmt.Errorf("cuda: the GPU executor runs batch 1")
	}
	base := []float64{st.RotaryBaseOf(0)}
	if err := cudaErr("cuMemcpyHtoD(rotary base)", d.drv.memcpyHtoD(p.base.Ptr, unsafe.Pointer(&base[0]), 8)); err != nil {
		return err
	}
	if b := st.RotaryBaseOf(0); p.invFreq != nil && b != p.freqBase {
		f := autograd.InvFreq(b, p.freqDim)
		if err := cudaErr("cuMemcpyHtoD(inverse frequencies)", d.drv.memcpyHtoD(p.invFreq.Ptr, unsafe.Pointer(&f[0]), int64(len(f))*4)); err != nil {
			return err
		}
		p.freqBase = b
	}
	pos := []int32{int32(st.Past)}
	if err := cudaErr("cuMemcpyHtoD(position)", d.drv.memcpyHtoD(p.pos.Ptr, unsafe.Pointer(&pos[0]), 4)); err != nil {
		return err
	}
	if len(st.IDs) > 0 {
		if int64(len(st.IDs))*4 > p.ids.Bytes {
			return fmt.Errorf("cuda: %d ids for a program of %d", len(st.IDs), p.ids.Bytes/4)
		}
		p.idsBuf = append(p.idsBuf[:0], st.IDs...)
		if err := cudaErr("cuMemcpyHtoD(ids)", d.drv.memcpyHtoD(p.ids.Ptr, unsafe.Pointer(&p.idsBuf[0]), int64(len(p.idsBuf))*4)); err != nil {
			return err
		}
	}
	p.logits = p.logits[:0]
	var key [2]any
	if p.hasAttention {
		if st.Cache == nil {
			return fmt.Errorf("cuda: the GPU executor runs attention over a KV cache")
		}
		dc, err := d.cacheFor(st.Cache)
		if err != nil {
			return err
		}
		if p.parts == nil || p.parts.maxChunks*attnChunk < dc.max {
			if p.parts != nil {
				p.parts.Free(d)
			}
			if p.parts, err = d.NewDecodeParts(1, st.Cache.Heads, st.Cache.HeadDim, dc.max); err != nil {
				return err
			}
		}
		key = [2]any{dc, p.parts}
	}
	if p.graphable && p.GraphErr == nil {
		if p.graph == nil || p.graphKey != key {
			p.graph.destroy()
			g, err := d.capture(p.launches)
			if err != nil {
				p.GraphErr, p.graph = err, nil
				return p.launches()
			}
			p.graph, p.graphKey = g, key
		}
		p.Graphed++
		return d.launchGraph(p.graph)
	}
	return p.launches()
}

func (p *Program) launches() error {
	for i, f := range p.ins {
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", p.names[i], err)
		}
	}
	return nil
}

// Logits downloads the output [rows, cols].
func (p *Program) Logits() ([]float32, error) {
	if len(p.logits) == 0 {
		p.logits = make([]float32, p.out.rows*p.out.cols)
		if err := Download(p.d, p.logits, p.out.buf); err != nil {
			p.logits = p.logits[:0]
			return nil, err
		}
	}
	return p.logits, nil
}

// Sample picks the next id from the last row of the output on the device (the repetition
// penalty over seen), with u the uniform draw; limit > 0 restricts the choice to the first
// limit ids.
func (p *Program) Sample(sp autograd.SampleParams, u float64, seen []int, limit int) (int, error) {
	d, n := p.d, p.out.cols
	if limit > 0 && limit < n {
		n = limit
	}
	var err error
	if p.sampleOut == nil {
		if p.sampleOut, err = d.Alloc(4, "sampled id"); err != nil {
			return 0, err
		}
		if p.work, err = d.Alloc(int64(p.out.cols)*4, "sampling scratch"); err != nil {
			return 0, err
		}
		if p.seen, err = d.Alloc(int64(p.out.cols), "seen ids"); err != nil {
			return 0, err
		}
		p.owned = append(p.owned, p.sampleOut, p.work, p.seen)
		p.seenHost = make([]bool, p.out.cols)
		if err := cudaErr("cuMemsetD8", d.drv.memsetD8(p.seen.Ptr, 0, int64(p.out.cols))); err != nil {
			return 0, err
		}
	}
	// keep the device's seen marks equal to seen: add the new ids, start over if it changed
	if len(seen) < len(p.seenIDs) || !slices.Equal(seen[:len(p.seenIDs)], p.seenIDs) {
		clear(p.seenHost)
		p.seenIDs = p.seenIDs[:0]
		if err := cudaErr("cuMemsetD8", d.drv.memsetD8(p.seen.Ptr, 0, int64(p.out.cols))); err != nil {
			return 0, err
		}
	}
	for _, id := range seen[len(p.seenIDs):] {
		if id >= 0 && id < len(p.seenHost) && !p.seenHost[id] {
			p.seenHost[id] = true
			if err := cudaErr("cuMemsetD8", d.drv.memsetD8(p.seen.Ptr+devPtr(id), 1, 1)); err != nil {
				return 0, err
			}
		}
	}
	p.seenIDs = append(p.seenIDs, seen[len(p.seenIDs):]...)
	last := p.out.ptr().Slice(int64((p.out.rows-1)*p.out.stride*4), int64(p.out.cols*4))
	var seenBuf *Buffer
	if sp.RepetitionPenalty != 0 && sp.RepetitionPenalty != 1 {
		seenBuf = p.seen
	}
	if err := d.SampleToken(p.sampleOut, p.work, last, seenBuf, n, sp, u); err != nil {
		return 0, err
	}
	id := []int32{0}
	if err := Download(d, id, p.sampleOut); err != nil {
		return 0, err
	}
	return int(id[0]), nil
}

// Profile runs the program reps times eagerly with CUDA events around every instruction and
// returns the GPU time per kind of instruction per run, the most expensive first.
func (p *Program) Profile(reps int) (times []autograd.OpTime, err error) {
	if err := p.Run(); err != nil { // uploads, cache
		return nil, err
	}
	evs := make([]devEvent, len(p.ins)+1)
	for i := range evs {
		var err error
		if evs[i], err = p.d.drv.eventCreate(); err != nil {
			return nil, cudaErr("cuEventCreate", err)
		}
	}
	defer func() {
		for i := range evs {
			if derr := p.d.drv.eventDestroy(&evs[i]); derr != nil && err == nil {
				times, err = nil, cudaErr("cuEventDestroy", derr)
			}
		}
	}()
	byKind := map[string]*autograd.OpTime{}
	var order []string
	for r := 0; r < reps; r++ {
		for i, f := range p.ins {
			if err := p.d.drv.eventRecord(evs[i]); err != nil {
				return nil, cudaErr("cuEventRecord", err)
			}
			if err := f(); err != nil {
				return nil, err
			}
		}
		if err := p.d.drv.eventRecord(evs[len(p.ins)]); err != nil {
			return nil, cudaErr("cuEventRecord", err)
		}
		if err := p.d.drv.eventSynchronize(evs[len(p.ins)]); err != nil {
			return nil, cudaErr("cuEventSynchronize", err)
		}
		for i := range p.ins {
			ms, err := p.d.drv.eventElapsed(evs[i], evs[i+1])
			if err != nil {
				return nil, cudaErr("cuEventElapsedTime", err)
			}
			k := p.kinds[i]
			o := byKind[k]
			if o == nil {
				o = &autograd.OpTime{Kind: k}
				byKind[k] = o
				order = append(order, k)
			}
			if r == 0 {
				o.Count++
			}
			o.Micros += ms * 1000 / float64(reps)
		}
	}
	out := make([]autograd.OpTime, 0, len(order))
	for _, k := range order {
		out = append(out, *byKind[k])
	}
	slices.SortStableFunc(out, func(a, b autograd.OpTime) int { return int(b.Micros*1000) - int(a.Micros*1000) })
	return out, nil
}

// Stats are the launches per run, the runs replayed from a CUDA graph and why capture
// failed, if it did.
func (p *Program) Stats() (launches, graphed int, graphErr error) {
	return p.Launches, p.Graphed, p.GraphErr
}

// ActivationBytes is the device memory of the program's activations and scratch buffers,
// one arena planned from their lifetimes.
func (p *Program) ActivationBytes() int64 { return p.activations }

// Close frees the program's buffers (parameters and caches stay with the Device).
func (p *Program) Close() error {
	p.graph.destroy()
	p.graph = nil
	if p.loss != nil {
		for _, sc := range p.loss.scratch {
			sc.Free(p.d)
		}
		p.loss.scratch = nil
	}
	if p.parts != nil {
		p.parts.Free(p.d)
		p.parts = nil
	}
	for _, b := range p.owned {
		p.d.Free(b)
	}
	p.owned = nil
	return nil
}

// children is n's arguments in order.
func children(g *G.ExprGraph, n *G.Node) []*G.Node {
	var out []*G.Node
	it := g.From(n.ID())
	for it.Next() {
		out = append(out, it.Node().(*G.Node))
	}
	return out
}
