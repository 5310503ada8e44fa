package autograd

// What an op's settings are, read by executors other than Machine (the GPU executor in
// package autograd/cuda compiles the same graphs and must know, say, a projection's scale or
// which gradient of SwiGLU a node is). Read-only: an op is built by its graph function
// (RMSNorm, Linear, Attention, ...), never as a literal; the op types' other methods (Arity,
// Type, InferShape, Do, DiffWRT, SymDiff, ...) implement gorgonia.Op and its differentiation.

// HasBias reports whether the projection adds a bias (a third input).
func (o *LinearOp) HasBias() bool { return o.bias }

// TrainsWeight reports whether the graph asks for the weight's gradient.
func (o *LinearOp) TrainsWeight() bool { return o.trainW }

// Scale is the factor of y = scale x W^T: 1 for a plain projection.
func (o *LinearOp) Scale() float64 { return gain(o.scale) }

// Scale is the factor of dx = scale dy W.
func (o *LinearGradXOp) Scale() float64 { return gain(o.scale) }

// Scale is the factor of dW = scale dy^T x.
func (o *LinearGradWOp) Scale() float64 { return gain(o.scale) }

// Backward reports whether the op is the loss's gradient (inputs logits and dloss, result
// dlogits) rather than the loss.
func (o *CrossEntropyOp) Backward() bool { return o.backward }

// Forward is the loss op a backward op is the gradient of (nil for the loss itself).
func (o *CrossEntropyOp) Forward() *CrossEntropyOp { return o.fwd }

// Step is the batch the loss reads its targets from.
func (o *CrossEntropyOp) Step() *Step { return o.step }

// Kind is the graph function that made the op: "Embedding" (a whole table), "SelectRows" or
// "EmbeddingRows" (rows of a partial table, -1 giving a zero row).
func (o *GatherOp) Kind() string { return o.name }

// Rows is the number of rows the op gathers.
func (o *GatherOp) Rows() int { return o.n }

// Index is the row indices of the current step, unchecked.
func (o *GatherOp) Index() []int32 { return o.index() }

// Indices is the row indices of the current step checked against a table of rows rows.
func (o *GatherOp) Indices(rows int) ([]int32, error) { return o.indices(rows) }

// Gather is the gather op whose table gradient this op sums.
func (o *ScatterOp) Gather() *GatherOp { return o.gather }

// Take reports whether the op is PlaceColumns' backward ([N, width] -> [N, S]).
func (o *ColumnsOp) Take() bool { return o.take }

// Offset is the first of the wide matrix's columns that the narrow one's fill.
func (o *ColumnsOp) Offset() int { return o.off }

// Width is the wide matrix's columns.
func (o *ColumnsOp) Width() int { return o.width }

// Narrow is the narrow matrix's columns (S).
func (o *ColumnsOp) Narrow() int { return o.s }

// Layer is the block whose KV cache (if the step has one) the attention reads and appends to.
func (o *AttentionOp) Layer() int { return o.layer }

// Forward is the attention op whose gradient this is.
func (o *AttentionGradOp) Forward() *AttentionOp { return o.fwd }

// Part is which gradient the op picks (0 dq, 1 dk, 2 dv).
func (o *PickOp) Part() int { return o.part }

// Of is the number of parts.
func (o *PickOp) Of() int { return o.of }

// Grad is 0 for SwiGLU itself, 1 for its gradient by the up projection a, 2 by the gate g.
func (o *SwiGLUOp) Grad() int { return o.grad }

// Eps is RMSNorm's epsilon.
func (o *RMSNormOp) Eps() float64 { return o.eps }

// Eps is RMSNorm's epsilon.
func (o *RMSNormGradXOp) Eps() float64 { return o.eps }

// Weight is the quantized layer.
func (o *Int4Op) Weight() *Int4 { return o.w }

// Backward reports whether the op is the layer's input gradient (dy [M, N] -> dx [M, K]).
func (o *Int4Op) Backward() bool { return o.backward }

// Heads is the number of heads.
func (o *SplitHeadsOp) Heads() int { return o.heads }

// HeadDim is the width of one head.
func (o *SplitHeadsOp) HeadDim() int { return o.dim }

// Part is which third of the fused qkv projection the op takes (0 q, 1 k, 2 v).
func (o *SplitHeadsOp) Part() int { return o.part }

// Split is the SplitHeads whose gradient this op places back.
func (o *MergePartOp) Split() *SplitHeadsOp { return &o.split }

// Prob is the probability of dropping an element.
func (o *DropoutOp) Prob() float64 { return o.p }

// Key tells the op's mask apart from the other dropouts' of the same step.
func (o *DropoutOp) Key() uint64 { return o.key }

// Step is the step whose seed draws the masks.
func (o *DropoutOp) Step() *Step { return o.step }

// Inverse reports whether the op is rotary's gradient (the rotation backwards).
func (o *RotaryOp) Inverse() bool { return o.inverse }

// Device is the sink an executor on a device hands the captured matrix to (see
// CaptureFor), nil for a capture for Machine.
func (o *CaptureOp) Device() any { return o.device }

// RotaryBaseOf is the rotary base of row b: Base[b] when set, else RotaryBase.
func (s *Step) RotaryBaseOf(b int) float64 { return s.base(b) }
