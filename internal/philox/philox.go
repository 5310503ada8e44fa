// Package philox is the Philox4x32-10 counter-based generator (Salmon, Moraes, Dror and
// Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the one cuRAND and
// PyTorch's CUDA dropout use: 128 random bits from a 128-bit counter and a 64-bit key, so any
// element of a stream is drawn on its own, in any order, by any thread or device.
package philox

import "math/bits"

// The round multipliers and the key schedule's increments (Weyl constants).
const (
	m0, m1 = 0xD2511F53, 0xCD9E8D57
	w0, w1 = 0x9E3779B9, 0xBB67AE85
)

// Block is Philox4x32 with 10 rounds of the counter ctr under key.
func Block(ctr [4]uint32, key [2]uint32) [4]uint32 {
	c0, c1, c2, c3 := ctr[0], ctr[1], ctr[2], ctr[3]
	k0, k1 := key[0], key[1]
	for r := 0; r < 10; r++ {
		if r > 0 {
			k0 += w0
			k1 += w1
		}
		hi0, lo0 := bits.Mul32(m0, c0)
		hi1, lo1 := bits.Mul32(m1, c2)
		c0, c1, c2, c3 = hi1^c1^k0, lo1, hi0^c3^k1, lo0
	}
	return [4]uint32{c0, c1, c2, c3}
}

// Words fills out with the 32-bit words first, first+1, ... of the stream keyed by (seed,
// stream): word i is word i mod 4 of Block({i/4 as two words, stream as two words}, seed as
// two words), low words first.
func Words(out []uint32, first uint64, seed, stream uint64) {
	key := [2]uint32{uint32(seed), uint32(seed >> 32)}
	s0, s1 := uint32(stream), uint32(stream>>32)
	i := first
	for len(out) > 0 {
		g := i / 4
		b := Block([4]uint32{uint32(g), uint32(g >> 32), s0, s1}, key)
		n := copy(out, b[i%4:])
		out = out[n:]
		i += uint64(n)
	}
}
