package serve

import "encoding/binary"

// The byte automaton behind constrained decoding: a nondeterministic pushdown automaton over
// the bytes of a JSON value of a compiled schema (or of Qwen's "Thought: ...\nAction: NAME
// \nAction Input: {JSON}" call). A state is a set of threads; each thread is an immutable
// stack of frames, so stepping a byte builds new top frames and shares the rest, and a state
// can be kept at every depth of a walk over the vocabulary's token bytes.
const (
	// maxWhitespace is the most consecutive whitespace bytes allowed between JSON tokens: a
	// model must not be able to fill its reply with blanks.
	maxWhitespace = 24
	// maxDigits is the most digits in each part of a number (integer, fraction, exponent).
	maxDigits = 16
	// maxThoughtBytes is the most bytes of the thought before a constrained tool call.
	maxThoughtBytes = 256
	// maxThreads bounds a state's threads (alternatives still open); with maxAlternatives it
	// is only reached by alternatives nested in alternatives.
	maxThreads = 4096
	// maxAlternatives is the most alternatives of one anyOf or oneOf and the most choices of a
	// constrained reply (functions, and the final answer): more are refused.
	maxAlternatives = 64
)

type frameKind uint8

const (
	fValue  frameKind = iota // a value of s is next (whitespace may come first)
	fObject                  // inside an object; phase says what may come next
	fArray                   // inside an array
	fString                  // inside a string; n holds the UTF-8 and escape state
	fLit                     // lit must come next
	fNumber                  // inside a number; phase is its state, n its digits in the part
	fLine                    // the thought before a call: text up to a newline
)

// Phases of an object or array frame.
const (
	pStart uint8 = iota // after { or [
	pColon              // after a key
	pAfter              // after a value
	pNext               // after a comma
)

type frame struct {
	kind  frameKind
	phase uint8
	ws    uint8 // consecutive whitespace bytes just before
	depth uint8 // objects and arrays open below this frame
	s     *schema
	seen  uint64 // object: bit i set once props[i] is written
	key   int    // object: the property whose value comes next (-1: an extra key); string: extraKey for an extra key beside declared ones
	n     int    // array: items so far; string and line: escape/UTF-8 state and length
	lit   string // what must come next
	next  *frame
}

// state is the set of threads the bytes so far leave open; a nil thread has finished.
type state []*frame

// startState is the state before the first byte of a value of s.
func startState(s *schema) state { return state{{kind: fValue, s: s}} }

// callState is the state before Qwen's ReAct reply: "Thought: " (unless the prompt ends
// with it), a line of thought, then "Action: NAME\nAction Input: " and arguments matching
// NAME's schema, or, when answer is set, "Final Answer: " and a value of answer.
func callState(names []string, params []*schema, answer *schema, thoughtSaid bool) state {
	var st state
	add := func(after *frame) {
		f := &frame{kind: fLine, next: after}
		if !thoughtSaid {
			f = &frame{kind: fLit, lit: "Thought: ", next: f}
		}
		st = append(st, f)
	}
	for i, name := range names {
		args := &frame{kind: fValue, s: params[i]}
		add(&frame{kind: fLit, lit: "Action: " + name + "\nAction Input: ", next: args})
	}
	if answer != nil {
		add(&frame{kind: fLit, lit: "Final Answer: ", next: &frame{kind: fValue, s: answer}})
	}
	return st
}

// extraKey marks the string frame of an extra key in an object with declared properties: it
// keeps the key's bytes in lit and refuses escapes and the declared names.
const extraKey = -2

// declared reports whether the key text (without quotes) is a property s declares.
func declared(s *schema, key string) bool {
	for _, p := range s.props {
		if p.key == `"`+key+`"` {
			return true
		}
	}
	return false
}

// advance steps every thread of st over b; an empty result means b cannot come next.
func (st state) advance(b byte) state {
	var out state
	for _, f := range st {
		if f == nil {
			continue
		}
		out = step(f, b, out)
		if len(out) > maxThreads {
			out = out[:maxThreads]
		}
	}
	return out
}

// complete reports whether the bytes so far are a whole value (or call).
func (st state) complete() bool {
	for _, f := range st {
		if f == nil || f.kind == fNumber && numberEnds(f) && f.next == nil {
			return true
		}
	}
	return false
}

// key encodes st for caching the token masks of states seen before.
func (st state) key(buf []byte) []byte {
	for _, f := range st {
		for ; f != nil; f = f.next {
			buf = append(buf, byte(f.kind), f.phase, f.ws, f.depth)
			id := 0
			if f.s != nil {
				id = f.s.id
			}
			buf = binary.AppendVarint(buf, int64(id))
			buf = binary.AppendUvarint(buf, f.seen)
			buf = binary.AppendVarint(buf, int64(f.key))
			buf = binary.AppendVarint(buf, int64(f.n))
			buf = binary.AppendUvarint(buf, uint64(len(f.lit)))
			buf = append(buf, f.lit...)
		}
		buf = append(buf, 0xff)
	}
	return buf
}

func isSpace(b byte) bool { return b == ' ' || b == '\n' || b == '\t' || b == '\r' }

func with(f *frame, edit func(*frame)) *frame {
	c := *f
	c.ws = 0
	edit(&c)
	return &c
}

// step appends to out the threads that f leads to after b.
func step(f *frame, b byte, out state) state {
	switch f.kind {
	case fValue:
		if isSpace(b) {
			if f.ws < maxWhitespace {
				return append(out, with(f, func(c *frame) { c.ws = f.ws + 1 }))
			}
			return out
		}
		return startValue(f.s, f.depth, b, f.next, out)
	case fLit:
		if b != f.lit[0] {
			return out
		}
		if len(f.lit) == 1 {
			return append(out, f.next)
		}
		return append(out, with(f, func(c *frame) { c.lit = f.lit[1:] }))
	case fString:
		n, ok, closed := stringStep(f.n, b)
		switch {
		case !ok:
			return out
		case f.key == extraKey && closed:
			if declared(f.s, f.lit) {
				return out
			}
			return append(out, f.next)
		case closed:
			return append(out, f.next)
		case f.key == extraKey:
			if b == '\\' && f.n == 0 { // an escape could spell a declared name
				return out
			}
			return append(out, with(f, func(c *frame) { c.n, c.lit = n, f.lit+string(b) }))
		}
		return append(out, with(f, func(c *frame) { c.n = n }))
	case fLine:
		if b == '\n' {
			return append(out, f.next)
		}
		length, utf := f.n>>24, f.n&(1<<24-1)
		if length >= maxThoughtBytes || b < 0x20 && b != '\t' {
			return out
		}
		utf, ok := utf8Step(utf, b)
		if !ok {
			return out
		}
		return append(out, with(f, func(c *frame) { c.n = (length+1)<<24 | utf }))
	case fNumber:
		if g, ok := numberStep(f, b); ok {
			return append(out, g)
		}
		if numberEnds(f) && f.next != nil {
			return step(f.next, b, out)
		}
		return out
	case fObject:
		return objectStep(f, b, out)
	case fArray:
		return arrayStep(f, b, out)
	}
	return out
}

// startValue appends the threads that begin a value of s with b, continuing with next.
func startValue(s *schema, depth uint8, b byte, next *frame, out state) state {
	nested := depth < maxSchemaDepth
	switch s.kind {
	case kUnion:
		for _, a := range s.alts {
			out = startValue(a, depth, b, next, out)
		}
	case kEnum:
		for _, l := range s.lits {
			out = step(&frame{kind: fLit, lit: l, next: next}, b, out)
		}
	case kAny:
		switch {
		case b == '{' && nested:
			out = startValue(anyObject, depth, b, next, out)
		case b == '[' && nested:
			out = startValue(anyArray, depth, b, next, out)
		case b == '"':
			out = startValue(stringSchema, depth, b, next, out)
		case b == 't' || b == 'f':
			out = startValue(boolSchema, depth, b, next, out)
		case b == 'n':
			out = startValue(nullSchema, depth, b, next, out)
		default:
			out = startValue(numberSchema, depth, b, next, out)
		}
	case kObject:
		if b == '{' {
			out = append(out, &frame{kind: fObject, s: s, depth: depth + 1, key: -1, next: next})
		}
	case kArray:
		if b == '[' {
			out = append(out, &frame{kind: fArray, s: s, depth: depth + 1, next: next})
		}
	case kString:
		if b == '"' {
			out = append(out, &frame{kind: fString, next: next})
		}
	case kNumber, kInteger:
		if g, ok := numberStep(&frame{kind: fNumber, s: s, next: next}, b); ok {
			out = append(out, g)
		}
	case kBool:
		out = step(&frame{kind: fLit, lit: "true", next: next}, b, out)
		out = step(&frame{kind: fLit, lit: "false", next: next}, b, out)
	case kNull:
		out = step(&frame{kind: fLit, lit: "null", next: next}, b, out)
	}
	return out
}

// objectStep: { (key : value (, key : value)*)? } with only the schema's keys, each once,
// unless the object is open, and } only once every required key is written.
func objectStep(f *frame, b byte, out state) state {
	s := f.s
	if isSpace(b) {
		if f.ws < maxWhitespace {
			return append(out, with(f, func(c *frame) { c.ws = f.ws + 1 }))
		}
		return out
	}
	done := f.seen&s.required == s.required
	more := s.open || f.seen != 1<<len(s.props)-1
	switch {
	case f.phase == pStart && b == '}' && done, f.phase == pAfter && b == '}' && done:
		return append(out, f.next)
	case f.phase == pAfter && b == ',' && more:
		return append(out, with(f, func(c *frame) { c.phase = pNext }))
	case f.phase == pColon && b == ':':
		vs := anySchema
		if f.key >= 0 {
			vs = s.props[f.key].s
		}
		after := with(f, func(c *frame) { c.phase, c.key = pAfter, -1 })
		return append(out, &frame{kind: fValue, s: vs, depth: f.depth, next: after})
	case (f.phase == pStart || f.phase == pNext) && b == '"':
		for i, p := range s.props {
			if f.seen&(1<<i) != 0 {
				continue
			}
			obj := with(f, func(c *frame) { c.phase, c.key, c.seen = pColon, i, f.seen|1<<i })
			out = append(out, &frame{kind: fLit, lit: p.key[1:], next: obj})
		}
		if s.open {
			obj := with(f, func(c *frame) { c.phase, c.key = pColon, -1 })
			key := &frame{kind: fString, next: obj}
			if len(s.props) > 0 { // an extra key must not repeat a declared one
				key.key, key.s = extraKey, s
			}
			out = append(out, key)
		}
	}
	return out
}

// arrayStep: [ (value (, value)*)? ] with minItems to maxItems values.
func arrayStep(f *frame, b byte, out state) state {
	s := f.s
	if isSpace(b) {
		if f.ws < maxWhitespace {
			return append(out, with(f, func(c *frame) { c.ws = f.ws + 1 }))
		}
		return out
	}
	switch {
	case (f.phase == pStart || f.phase == pAfter) && b == ']':
		if f.n >= s.minItems {
			out = append(out, f.next)
		}
		return out
	case f.phase == pAfter && b == ',':
		if s.maxItems < 0 || f.n < s.maxItems {
			out = append(out, with(f, func(c *frame) { c.phase = pNext }))
		}
		return out
	case f.phase == pStart && (s.maxItems < 0 || s.maxItems > 0), f.phase == pNext:
		after := with(f, func(c *frame) { c.phase, c.n = pAfter, f.n+1 })
		return startValue(s.items, f.depth, b, after, out)
	}
	return out
}

// Number states (JSON's grammar): -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
const (
	nStart uint8 = iota
	nMinus
	nZero // accepting
	nInt  // accepting
	nDot
	nFrac // accepting
	nE
	nESign
	nExp // accepting
)

func numberEnds(f *frame) bool {
	return f.phase == nZero || f.phase == nInt || f.phase == nFrac || f.phase == nExp
}

// numberStep moves a number frame over b; false when b cannot continue the number. The
// frame's key is 1 once a minus sign is read.
func numberStep(f *frame, b byte) (*frame, bool) {
	digit := b >= '0' && b <= '9'
	s := f.s
	integer := s.kind == kInteger
	intDigits := s.posDigits
	if f.key == 1 {
		intDigits = s.negDigits
	}
	to := func(p uint8, digits int) (*frame, bool) {
		if digits > maxDigits || (p == nInt || p == nZero) && digits > max(intDigits, 1) || p == nInt && intDigits == 0 {
			return nil, false
		}
		return with(f, func(c *frame) { c.phase, c.n = p, digits }), true
	}
	switch f.phase {
	case nStart, nMinus:
		switch {
		case b == '-' && f.phase == nStart && s.negDigits > 0:
			g, ok := to(nMinus, 0)
			if ok {
				g.key = 1
			}
			return g, ok
		case b == '0':
			return to(nZero, 1)
		case digit:
			return to(nInt, 1)
		}
	case nZero, nInt:
		switch {
		case digit && f.phase == nInt:
			return to(nInt, f.n+1)
		case b == '.' && !integer:
			return to(nDot, 0)
		case (b == 'e' || b == 'E') && !integer && !s.noExp:
			return to(nE, 0)
		}
	case nDot, nFrac:
		switch {
		case digit:
			return to(nFrac, f.n+1)
		case (b == 'e' || b == 'E') && f.phase == nFrac && !s.noExp:
			return to(nE, 0)
		}
	case nE, nESign, nExp:
		switch {
		case digit:
			return to(nExp, f.n+1)
		case (b == '+' || b == '-') && f.phase == nE:
			return to(nESign, 0)
		}
	}
	return nil, false
}

// String state (in a frame's n): bits 0-1 UTF-8 continuation bytes still due, bits 8-15
// and 16-23 the range of the next one, bits 24-26 the escape state (1: after \, 2-5: hex
// digits of \u still due).
func stringStep(n int, b byte) (next int, ok, closed bool) {
	esc := n >> 24
	switch {
	case esc == 1:
		switch b {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			return 0, true, false
		case 'u':
			return 5 << 24, true, false
		}
		return 0, false, false
	case esc >= 2:
		if !(b >= '0' && b <= '9' || b >= 'a' && b <= 'f' || b >= 'A' && b <= 'F') {
			return 0, false, false
		}
		if esc == 2 {
			return 0, true, false
		}
		return (esc - 1) << 24, true, false
	}
	if n&3 == 0 {
		switch {
		case b == '"':
			return 0, true, true
		case b == '\\':
			return 1 << 24, true, false
		case b < 0x20:
			return 0, false, false
		}
	}
	u, ok := utf8Step(n, b)
	return u, ok, false
}

// utf8Step checks one byte of UTF-8 (as unicode/utf8 accepts: no overlong forms, surrogates
// or code points above U+10FFFF); the state is the continuation bytes due and the next one's
// range.
func utf8Step(n int, b byte) (int, bool) {
	due, lo, hi := n&3, byte(n>>8), byte(n>>16)
	enc := func(due int, lo, hi byte) int { return due | int(lo)<<8 | int(hi)<<16 }
	if due > 0 {
		if b < lo || b > hi {
			return 0, false
		}
		if due == 1 {
			return 0, true
		}
		return enc(due-1, 0x80, 0xbf), true
	}
	switch {
	case b < 0x80:
		return 0, true
	case b >= 0xc2 && b <= 0xdf:
		return enc(1, 0x80, 0xbf), true
	case b == 0xe0:
		return enc(2, 0xa0, 0xbf), true
	case b == 0xed:
		return enc(2, 0x80, 0x9f), true
	case b >= 0xe1 && b <= 0xef:
		return enc(2, 0x80, 0xbf), true
	case b == 0xf0:
		return enc(3, 0x90, 0xbf), true
	case b == 0xf4:
		return enc(3, 0x80, 0x8f), true
	case b >= 0xf1 && b <= 0xf3:
		return enc(3, 0x80, 0xbf), true
	}
	return 0, false
}

// accepts reports whether text is complete under st (a test and fuzzing helper).
func (st state) accepts(text []byte) bool {
	for _, b := range text {
		if st = st.advance(b); len(st) == 0 {
			return false
		}
	}
	return st.complete()
}
