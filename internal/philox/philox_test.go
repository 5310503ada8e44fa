package philox

import "testing"

// TestKnownAnswers: Random123's published known-answer vectors for Philox4x32-10
// (kat_vectors: counter, key, result).
func TestKnownAnswers(t *testing.T) {
	for _, c := range []struct {
		ctr  [4]uint32
		key  [2]uint32
		want [4]uint32
	}{
		{[4]uint32{0, 0, 0, 0}, [2]uint32{0, 0}, [4]uint32{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
		{[4]uint32{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, [2]uint32{0xffffffff, 0xffffffff},
			[4]uint32{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
		{[4]uint32{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, [2]uint32{0xa4093822, 0x299f31d0},
			[4]uint32{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
	} {
		if got := Block(c.ctr, c.key); got != c.want {
			t.Errorf("Block(%08x, %08x) = %08x, want %08x", c.ctr, c.key, got, c.want)
		}
	}
}

// TestWords: any stretch of a stream equals the same stretch of the whole, whatever its
// start and length (blocks split at any word).
func TestWords(t *testing.T) {
	const seed, stream = 0x0123456789abcdef, 0xfedcba9876543210
	whole := make([]uint32, 64)
	Words(whole, 1<<33, seed, stream)
	want := Block([4]uint32{1 << 31, 0, 0x76543210, 0xfedcba98}, [2]uint32{0x89abcdef, 0x01234567})
	if [4]uint32(whole[:4]) != want {
		t.Fatalf("words 2^33..2^33+3 are %08x, Block of their counter gives %08x", whole[:4], want)
	}
	for first := 0; first < 12; first++ {
		for n := 0; first+n <= len(whole); n += 5 {
			part := make([]uint32, n)
			Words(part, 1<<33+uint64(first), seed, stream)
			for i, w := range part {
				if w != whole[first+i] {
					t.Fatalf("start %d, length %d: word %d is %08x, the whole stream has %08x", first, n, i, w, whole[first+i])
				}
			}
		}
	}
}
