package serve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// The JSON Schema subset that constrained decoding enforces (response_format json_schema and
// the arguments of a required tool call): type (one or a list), properties, required,
// additionalProperties (true or false), items, minItems, maxItems, enum, const, anyOf,
// oneOf (as anyOf), nullable, and minimum (at most 0) and maximum (at least 1) on numbers;
// annotations (title, description, default, examples, $schema, $id, $comment) are ignored.
// Anything else is refused, naming the keyword and where it is.
//
// Bounds are kept by limiting digits, which is sound but not complete: with maximum M the
// integer part has at most floor(log10(M)) digits, with minimum m < 0 negative numbers at
// most floor(log10(-m)), with minimum 0 there is no minus sign, and bounded numbers have no
// exponent. Zod's integers (minimum -2^53+1, maximum 2^53-1) thus get 15 digits.
const (
	// maxSchemaProps is the most properties one object schema may name (a bit set tracks
	// which were written).
	maxSchemaProps = 64
	// maxSchemaDepth bounds how deeply schemas (and values of an unconstrained JSON) nest.
	maxSchemaDepth = 32
	// maxSchemaNodes bounds the size of a compiled schema.
	maxSchemaNodes = 4096
)

type schemaKind uint8

const (
	kAny     schemaKind = iota // any JSON value
	kObject                    // props, required, open
	kArray                     // items, minItems, maxItems
	kString                    // any string
	kNumber                    // any number
	kInteger                   // a number without fraction or exponent
	kBool
	kNull
	kEnum  // one of lits
	kUnion // one of alts
)

// schema is a compiled JSON schema node.
type schema struct {
	id       int
	kind     schemaKind
	props    []schemaProp
	required uint64 // bit i: props[i] is required
	open     bool   // object: keys other than props are allowed (with any value)
	items    *schema
	minItems int
	maxItems int // -1: unbounded
	lits     []string
	alts     []*schema
	// numbers: the most integer digits of positive and negative values (0: no negative
	// values), and whether an exponent may follow
	posDigits, negDigits int
	noExp                bool
}

// schemaProp is a named property: key is its name as JSON text (with quotes).
type schemaProp struct {
	name, key string
	s         *schema
}

var (
	anySchema    = &schema{id: -1, kind: kAny}
	anyObject    = &schema{id: -2, kind: kObject, open: true}
	anyArray     = &schema{id: -3, kind: kArray, items: anySchema, maxItems: -1}
	stringSchema = &schema{id: -4, kind: kString}
	numberSchema = &schema{id: -5, kind: kNumber, posDigits: maxDigits, negDigits: maxDigits}
	boolSchema   = &schema{id: -6, kind: kBool}
	nullSchema   = &schema{id: -7, kind: kNull}
)

// SchemaError names a schema feature constrained decoding cannot enforce, or a malformed
// schema, and where it is ($ is the schema's root).
type SchemaError struct {
	Path, Msg string
}

func (e *SchemaError) Error() string { return e.Path + ": " + e.Msg }

var schemaAnnotations = map[string]bool{"title": true, "description": true, "default": true, "examples": true, "$schema": true, "$id": true, "$comment": true}

type schemaCompiler struct{ nodes int }

// compileSchema compiles a JSON schema; an empty raw is any JSON value.
func compileSchema(raw json.RawMessage) (*schema, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return anySchema, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, &SchemaError{"$", "not valid JSON: " + err.Error()}
	}
	c := &schemaCompiler{}
	return c.node(v, "$", 0)
}

func (c *schemaCompiler) new(k schemaKind) *schema {
	c.nodes++
	return &schema{id: c.nodes, kind: k, maxItems: -1}
}

func (c *schemaCompiler) node(v any, path string, depth int) (*schema, error) {
	if b, ok := v.(bool); ok { // true: anything; false: nothing can match
		if !b {
			return nil, &SchemaError{path, "the schema false matches no value"}
		}
		return anySchema, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, &SchemaError{path, "a schema must be an object"}
	}
	if depth > maxSchemaDepth || c.nodes > maxSchemaNodes {
		return nil, &SchemaError{path, fmt.Sprintf("the schema nests deeper than %d or has more than %d nodes", maxSchemaDepth, maxSchemaNodes)}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		switch k {
		case "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "nullable", "minimum", "maximum":
		default:
			if !schemaAnnotations[k] {
				return nil, &SchemaError{path, fmt.Sprintf("unsupported schema keyword %q (constrained decoding supports type, properties, required, additionalProperties, items, minItems, maxItems, enum, const, anyOf, oneOf, nullable, minimum, maximum)", k)}
			}
		}
	}
	var s *schema
	var err error
	switch {
	case m["const"] != nil || m["enum"] != nil:
		s, err = c.enum(m, path)
	case m["anyOf"] != nil || m["oneOf"] != nil:
		s, err = c.union(m, path, depth)
	default:
		s, err = c.typed(m, path, depth)
	}
	if err != nil {
		return nil, err
	}
	if n, _ := m["nullable"].(bool); n && s.kind != kAny {
		u := c.new(kUnion)
		u.alts = []*schema{s, nullSchema}
		s = u
	}
	return s, nil
}

func (c *schemaCompiler) enum(m map[string]any, path string) (*schema, error) {
	var vals []any
	if cv, ok := m["const"]; ok {
		vals = []any{cv}
	} else {
		list, ok := m["enum"].([]any)
		if !ok || len(list) == 0 {
			return nil, &SchemaError{path + ".enum", "enum must be a non-empty array"}
		}
		vals = list
	}
	s := c.new(kEnum)
	for _, v := range vals {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			return nil, &SchemaError{path + ".enum", err.Error()}
		}
		s.lits = append(s.lits, strings.TrimSuffix(b.String(), "\n"))
	}
	return s, nil
}

func (c *schemaCompiler) union(m map[string]any, path string, depth int) (*schema, error) {
	key := "anyOf"
	if m[key] == nil {
		key = "oneOf"
	}
	list, ok := m[key].([]any)
	if !ok || len(list) == 0 {
		return nil, &SchemaError{path + "." + key, key + " must be a non-empty array"}
	}
	if len(list) > maxAlternatives {
		return nil, &SchemaError{path + "." + key, fmt.Sprintf("%s has %d alternatives; constrained decoding takes at most %d", key, len(list), maxAlternatives)}
	}
	if m["type"] != nil || m["properties"] != nil || m["items"] != nil {
		return nil, &SchemaError{path, key + " beside type, properties or items is not supported: put them in each alternative"}
	}
	s := c.new(kUnion)
	for i, v := range list {
		a, err := c.node(v, fmt.Sprintf("%s.%s[%d]", path, key, i), depth+1)
		if err != nil {
			return nil, err
		}
		s.alts = append(s.alts, a)
	}
	return s, nil
}

// typed compiles a schema by its type (or types); without one, properties mean an object,
// items an array, and nothing any value.
func (c *schemaCompiler) typed(m map[string]any, path string, depth int) (*schema, error) {
	var types []string
	switch t := m["type"].(type) {
	case nil:
		switch {
		case m["properties"] != nil || m["required"] != nil || m["additionalProperties"] != nil:
			types = []string{"object"}
		case m["items"] != nil:
			types = []string{"array"}
		default:
			return anySchema, nil
		}
	case string:
		types = []string{t}
	case []any:
		for _, x := range t {
			s, ok := x.(string)
			if !ok {
				return nil, &SchemaError{path + ".type", "type must be a string or an array of strings"}
			}
			types = append(types, s)
		}
	default:
		return nil, &SchemaError{path + ".type", "type must be a string or an array of strings"}
	}
	if len(types) == 0 {
		return nil, &SchemaError{path + ".type", "type is an empty array"}
	}
	var alts []*schema
	for _, t := range types {
		var s *schema
		var err error
		switch t {
		case "object":
			s, err = c.object(m, path, depth)
		case "array":
			s, err = c.array(m, path, depth)
		case "string":
			s = stringSchema
		case "number", "integer":
			s, err = c.number(m, path, t == "integer")
		case "boolean":
			s = boolSchema
		case "null":
			s = nullSchema
		default:
			return nil, &SchemaError{path + ".type", fmt.Sprintf("unknown type %q", t)}
		}
		if err != nil {
			return nil, err
		}
		alts = append(alts, s)
	}
	if len(alts) == 1 {
		return alts[0], nil
	}
	s := c.new(kUnion)
	s.alts = alts
	return s, nil
}

func (c *schemaCompiler) object(m map[string]any, path string, depth int) (*schema, error) {
	s := c.new(kObject)
	props, _ := m["properties"].(map[string]any)
	if m["properties"] != nil && props == nil {
		return nil, &SchemaError{path + ".properties", "properties must be an object"}
	}
	if len(props) > maxSchemaProps {
		return nil, &SchemaError{path + ".properties", fmt.Sprintf("%d properties; constrained decoding supports at most %d per object", len(props), maxSchemaProps)}
	}
	for _, name := range sortedKeys(m, "properties") {
		p, err := c.node(props[name], path+".properties."+name, depth+1)
		if err != nil {
			return nil, err
		}
		key, err := json.Marshal(name)
		if err != nil {
			return nil, &SchemaError{path + ".properties", err.Error()}
		}
		s.props = append(s.props, schemaProp{name: name, key: string(key), s: p})
	}
	if r, ok := m["required"]; ok {
		list, ok := r.([]any)
		if !ok {
			return nil, &SchemaError{path + ".required", "required must be an array of property names"}
		}
		for _, x := range list {
			name, _ := x.(string)
			i := slices.IndexFunc(s.props, func(p schemaProp) bool { return p.name == name })
			if i < 0 {
				return nil, &SchemaError{path + ".required", fmt.Sprintf("required property %q is not among the properties", name)}
			}
			s.required |= 1 << i
		}
	}
	// a schema without properties is any object; one with properties allows only them
	// unless additionalProperties is true (as OpenAI's strict mode requires)
	s.open = len(s.props) == 0
	switch a := m["additionalProperties"].(type) {
	case nil:
	case bool:
		s.open = a
	case map[string]any:
		if len(a) > 0 {
			return nil, &SchemaError{path + ".additionalProperties", "additionalProperties as a schema is not supported (use true or false)"}
		}
		s.open = true
	default:
		return nil, &SchemaError{path + ".additionalProperties", "additionalProperties must be a boolean"}
	}
	return s, nil
}

// number compiles a number or integer schema with its bounds (see the package's note on
// how they are kept).
func (c *schemaCompiler) number(m map[string]any, path string, integer bool) (*schema, error) {
	s := c.new(kNumber)
	if integer {
		s.kind = kInteger
	}
	s.posDigits, s.negDigits = maxDigits, maxDigits
	for _, k := range []string{"minimum", "maximum"} {
		v, ok := m[k]
		if !ok {
			continue
		}
		n, ok := v.(json.Number)
		f, err := n.Float64()
		if !ok || err != nil {
			return nil, &SchemaError{path + "." + k, k + " must be a number"}
		}
		s.noExp = true
		switch {
		case k == "minimum" && f > 0:
			return nil, &SchemaError{path + ".minimum", fmt.Sprintf("minimum %s above 0 is not supported", n)}
		case k == "maximum" && f < 1:
			return nil, &SchemaError{path + ".maximum", fmt.Sprintf("maximum %s below 1 is not supported", n)}
		case k == "minimum":
			s.negDigits = min(s.negDigits, digitsBelow(-f))
		default:
			s.posDigits = min(s.posDigits, digitsBelow(f))
		}
	}
	return s, nil
}

// digitsBelow is the most integer digits d with 10^d <= x (x >= 0): every number with at
// most d integer digits is below x in size.
func digitsBelow(x float64) int {
	d := 0
	for p := 10.0; p <= x && d < maxDigits; p *= 10 {
		d++
	}
	return d
}

func (c *schemaCompiler) array(m map[string]any, path string, depth int) (*schema, error) {
	s := c.new(kArray)
	s.items = anySchema
	if it, ok := m["items"]; ok {
		var err error
		if s.items, err = c.node(it, path+".items", depth+1); err != nil {
			return nil, err
		}
	}
	for _, k := range []string{"minItems", "maxItems"} {
		v, ok := m[k]
		if !ok {
			continue
		}
		n, ok := v.(json.Number)
		i, err := n.Int64()
		if !ok || err != nil || i < 0 || i > maxSchemaNodes {
			return nil, &SchemaError{path + "." + k, fmt.Sprintf("%s must be an integer from 0 to %d", k, maxSchemaNodes)}
		}
		if k == "minItems" {
			s.minItems = int(i)
		} else {
			s.maxItems = int(i)
		}
	}
	if s.maxItems >= 0 && s.minItems > s.maxItems {
		return nil, &SchemaError{path, "minItems is above maxItems"}
	}
	return s, nil
}

// sortedKeys are the keys of the object at m[field], sorted: the order properties are
// offered in does not change what is valid, and sorting keeps compiled schemas deterministic.
func sortedKeys(m map[string]any, field string) []string {
	obj, _ := m[field].(map[string]any)
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
