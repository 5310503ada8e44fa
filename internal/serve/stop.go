package serve

import "strings"

// stopMatcher cuts a streamed reply at the first stop string: text is released only once
// it can no longer be the start of a stop string, so a stop string split across tokens is
// never shown.
type stopMatcher struct {
	stops   []string
	pending string
	hit     bool
}

// push adds text and returns what may be shown now; after a stop string it returns the text
// before it and ignores everything else.
func (m *stopMatcher) push(text string) string {
	if m.hit {
		return ""
	}
	m.pending += text
	cut := -1
	for _, s := range m.stops {
		if i := strings.Index(m.pending, s); i >= 0 && (cut < 0 || i < cut) {
			cut = i
		}
	}
	if cut >= 0 {
		out := m.pending[:cut]
		m.pending, m.hit = "", true
		return out
	}
	hold := 0
	for _, s := range m.stops {
		for n := min(len(s)-1, len(m.pending)); n > hold; n-- {
			if strings.HasSuffix(m.pending, s[:n]) {
				hold = n
				break
			}
		}
	}
	out := m.pending[:len(m.pending)-hold]
	m.pending = m.pending[len(m.pending)-hold:]
	return out
}

// flush returns what is held back at the end of the reply.
func (m *stopMatcher) flush() string {
	out := m.pending
	m.pending = ""
	return out
}
