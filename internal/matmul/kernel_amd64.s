//go:build amd64

#include "textflag.h"

// The macros below are shared by the AVX-512 (Z registers) and AVX2 (Y registers) functions;
// each expands to exactly the instructions it lists, in order. Labels are function scoped,
// so the ones inside a macro belong to the function that expands it.

// ARGS5 loads the five word-sized arguments n0-n4 (at 0, 8, ..., 32(FP)) into r0-r4.
#define ARGS5(n0, r0, n1, r1, n2, r2, n3, r3, n4, r4) \
	MOVQ n0+0(FP), r0; \
	MOVQ n1+8(FP), r1; \
	MOVQ n2+16(FP), r2; \
	MOVQ n3+24(FP), r3; \
	MOVQ n4+32(FP), r4

// ZERO2, ZERO4 and ZERO12 clear registers with op (VPXORD for Z, VXORPS for Y).
#define ZERO2(op, r0, r1) \
	op r0, r0, r0; \
	op r1, r1, r1

#define ZERO4(op, r0, r1, r2, r3) \
	ZERO2(op, r0, r1); \
	ZERO2(op, r2, r3)

#define ZERO12(op, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11) \
	ZERO4(op, r0, r1, r2, r3); \
	ZERO4(op, r4, r5, r6, r7); \
	ZERO4(op, r8, r9, r10, r11)

// FMA4 and FMA12 add u times v to each accumulator.
#define FMA4(u, v, c0, c1, c2, c3) \
	VFMADD231PS u, v, c0; \
	VFMADD231PS u, v, c1; \
	VFMADD231PS u, v, c2; \
	VFMADD231PS u, v, c3

#define FMA12(u, v, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11) \
	FMA4(u, v, c0, c1, c2, c3); \
	FMA4(u, v, c4, c5, c6, c7); \
	FMA4(u, v, c8, c9, c10, c11)

// KROW accumulates one row of a micro-kernel's tile: t = the float32 at off(SI) broadcast,
// c0 += t b0 and c1 += t b1 (b0, b1 the two B vectors of this step).
#define KROW(off, b0, b1, t, c0, c1) \
	VBROADCASTSS off(SI), t; \
	VFMADD231PS b0, t, c0; \
	VFMADD231PS b1, t, c1

// KROWS6 accumulates six rows, A's values from off(SI) on, the broadcasts alternating between
// t0 and t1; row r goes to c(2r), c(2r+1).
#define KROWS6(off, b0, b1, t0, t1, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11) \
	KROW(off+0, b0, b1, t0, c0, c1); \
	KROW(off+4, b0, b1, t1, c2, c3); \
	KROW(off+8, b0, b1, t0, c4, c5); \
	KROW(off+12, b0, b1, t1, c6, c7); \
	KROW(off+16, b0, b1, t0, c8, c9); \
	KROW(off+20, b0, b1, t1, c10, c11)

// CROW adds the accumulators c0, c1 of one row to C's row at DX (c1's half w bytes in) and
// stores the sums there; CSET stores them over it. CROWNEXT then moves DX on to the next row
// (R8 bytes on).
#define CROW(w, c0, c1) \
	VADDPS (DX), c0, c0; \
	VMOVUPS c0, (DX); \
	VADDPS w(DX), c1, c1; \
	VMOVUPS c1, w(DX)

#define CSET(w, c0, c1) \
	VMOVUPS c0, (DX); \
	VMOVUPS c1, w(DX)

#define CROWNEXT(row, w, c0, c1) \
	row(w, c0, c1); \
	ADDQ R8, DX

// CROWS6 is row (CROW or CSET) for six rows, row r's accumulators c(2r), c(2r+1), DX left on
// the last.
#define CROWS6(row, w, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11) \
	CROWNEXT(row, w, c0, c1); \
	CROWNEXT(row, w, c2, c3); \
	CROWNEXT(row, w, c4, c5); \
	CROWNEXT(row, w, c6, c7); \
	CROWNEXT(row, w, c8, c9); \
	row(w, c10, c11)

// KERNEL is the body of the micro-kernels: zero clears the tile's accumulators, b0 and b1
// receive a step's two B vectors (the second bw bytes on), rows adds A's values of the step
// times them to the accumulators, a step reads astep bytes of A and bstep of B, and store
// adds the accumulators to C.
#define KERNEL(zero, b0, b1, bw, rows, astep, bstep, store) \
	ARGS5(k, CX, a, SI, b, DI, c, DX, ldc, R8); \
	SHLQ $2, R8; \
	zero; \
	TESTQ CX, CX; \
	JEQ acc; \
loop: \
	VMOVUPS (DI), b0; \
	VMOVUPS bw(DI), b1; \
	rows; \
	ADDQ $astep, SI; \
	ADDQ $bstep, DI; \
	DECQ CX; \
	JNE loop; \
acc: \
	store; \
	VZEROUPPER; \
	RET

// The 12 x 32 tile (AVX-512) accumulates row r in Z(8+2r), Z(9+2r); B's vectors go to Z0, Z1
// and A's broadcasts to Z2, Z3.
#define ZERO12x32 \
	ZERO12(VPXORD, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15, Z16, Z17, Z18, Z19); \
	ZERO12(VPXORD, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31)

#define ROWS12x32 \
	KROWS6(0, Z0, Z1, Z2, Z3, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15, Z16, Z17, Z18, Z19); \
	KROWS6(24, Z0, Z1, Z2, Z3, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31)

#define STORE12x32(row) \
	CROWS6(row, 64, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15, Z16, Z17, Z18, Z19); \
	ADDQ R8, DX; \
	CROWS6(row, 64, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31)

// The 6 x 16 tile (AVX2) accumulates row r in Y(4+2r), Y(5+2r); B's vectors go to Y0, Y1 and
// A's broadcasts to Y2, Y3.
#define ZERO6x16 ZERO12(VXORPS, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15)
#define ROWS6x16 KROWS6(0, Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15)
#define STORE6x16(row) CROWS6(row, 32, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15)

// TILE12x32 and TILE6x16 are the two micro-kernels, row CROW (C += A B) or CSET (C = A B).
#define TILE12x32(row) KERNEL(ZERO12x32, Z0, Z1, 64, ROWS12x32, 48, 128, STORE12x32(row))
#define TILE6x16(row) KERNEL(ZERO6x16, Y0, Y1, 32, ROWS6x16, 24, 64, STORE6x16(row))

// DOTF32 and DOTBF16 add u times the vector of w at mem to acc; DOTBF16 widens the bf16
// values into t first (zero-extended to 32 bits, shifted into the high half).
#define DOTF32(mem, t, u, acc) \
	VFMADD231PS mem, u, acc

#define DOTBF16(mem, t, u, acc) \
	VPMOVZXWD mem, t; \
	VPSLLD $16, t, t; \
	VFMADD231PS t, u, acc

// HALF512 adds the upper 256 bits of z to y (its lower half) through Y8; HALF256 the upper
// 128 bits of y to x through X8.
#define HALF512(z, y) \
	VEXTRACTF64X4 $1, z, Y8; \
	VADDPS Y8, y, y

#define HALF256(y, x) \
	VEXTRACTF128 $1, y, X8; \
	VADDPS X8, x, x

// DOT4OUT stores the four horizontal sums of X4, X5, X6, X7 to out (DX).
#define DOT4OUT \
	VHADDPS X5, X4, X4; \
	VHADDPS X7, X6, X6; \
	VHADDPS X6, X4, X4; \
	VMOVUPS X4, (DX)

// DOT4SUM256 and DOT4SUM512 are DOT4OUT for accumulators Y4-Y7 and Z4-Z7.
#define DOT4SUM256 \
	HALF256(Y4, X4); \
	HALF256(Y5, X5); \
	HALF256(Y6, X6); \
	HALF256(Y7, X7); \
	DOT4OUT

#define DOT4SUM512 \
	HALF512(Z4, Y4); \
	HALF256(Y4, X4); \
	HALF512(Z5, Y5); \
	HALF256(Y5, X5); \
	HALF512(Z6, Y6); \
	HALF256(Y6, X6); \
	HALF512(Z7, Y7); \
	HALF256(Y7, X7); \
	DOT4OUT

// DOT4 is the body of the dot4 functions. Rows 0 and 2 of w are at DI and R9, rows 1 and 3
// R8 bytes further; eshift is log2 of the size of w's elements, lshift log2 of the lanes,
// zero clears the accumulators c0-c3, row is DOTF32 or DOTBF16 (temporaries t0-t2), u holds
// x's vector, a step reads xstep bytes of x and wstep of each row of w, and sum is DOT4SUM256
// or DOT4SUM512.
#define DOT4(eshift, lshift, zero, row, u, t0, t1, t2, c0, c1, c2, c3, xstep, wstep, sum) \
	ARGS5(k, CX, x, SI, w, DI, ldw, R8, out, DX); \
	SHLQ $eshift, R8; \
	LEAQ (DI)(R8*2), R9; \
	ZERO4(zero, c0, c1, c2, c3); \
	SHRQ $lshift, CX; \
	JEQ reduce; \
loop: \
	VMOVUPS (SI), u; \
	row((DI), t0, u, c0); \
	row((DI)(R8*1), t1, u, c1); \
	row((R9), t2, u, c2); \
	row((R9)(R8*1), t0, u, c3); \
	ADDQ $xstep, SI; \
	ADDQ $wstep, DI; \
	ADDQ $wstep, R9; \
	DECQ CX; \
	JNE loop; \
reduce: \
	sum; \
	VZEROUPPER; \
	RET

// LOADF32 and LOADBF16 load 8 elements at mem into the float32 lanes of y (bf16 widened).
#define LOADF32(mem, y) \
	VMOVUPS mem, y

#define LOADBF16(mem, y) \
	VPMOVZXWD mem, y; \
	VPSLLD $16, y, y

// TRANS8X8 transposes the 8 x 8 float32 block in Y0-Y7 (row r in Yr) through Y8-Y15 and
// stores column p of it to (DI) + p R11, leaving DI 8 R11 further on (R12 = 3 R11).
#define TRANS8X8 \
	VUNPCKLPS Y1, Y0, Y8; \
	VUNPCKHPS Y1, Y0, Y9; \
	VUNPCKLPS Y3, Y2, Y10; \
	VUNPCKHPS Y3, Y2, Y11; \
	VUNPCKLPS Y5, Y4, Y12; \
	VUNPCKHPS Y5, Y4, Y13; \
	VUNPCKLPS Y7, Y6, Y14; \
	VUNPCKHPS Y7, Y6, Y15; \
	VSHUFPS $0x44, Y10, Y8, Y0; \
	VSHUFPS $0xee, Y10, Y8, Y1; \
	VSHUFPS $0x44, Y11, Y9, Y2; \
	VSHUFPS $0xee, Y11, Y9, Y3; \
	VSHUFPS $0x44, Y14, Y12, Y4; \
	VSHUFPS $0xee, Y14, Y12, Y5; \
	VSHUFPS $0x44, Y15, Y13, Y6; \
	VSHUFPS $0xee, Y15, Y13, Y7; \
	VPERM2F128 $0x20, Y4, Y0, Y8; \
	VPERM2F128 $0x20, Y5, Y1, Y9; \
	VPERM2F128 $0x20, Y6, Y2, Y10; \
	VPERM2F128 $0x20, Y7, Y3, Y11; \
	VPERM2F128 $0x31, Y4, Y0, Y12; \
	VPERM2F128 $0x31, Y5, Y1, Y13; \
	VPERM2F128 $0x31, Y6, Y2, Y14; \
	VPERM2F128 $0x31, Y7, Y3, Y15; \
	VMOVUPS Y8, (DI); \
	VMOVUPS Y9, (DI)(R11*1); \
	VMOVUPS Y10, (DI)(R11*2); \
	VMOVUPS Y11, (DI)(R12*1); \
	LEAQ (DI)(R11*4), DI; \
	VMOVUPS Y12, (DI); \
	VMOVUPS Y13, (DI)(R11*1); \
	VMOVUPS Y14, (DI)(R11*2); \
	VMOVUPS Y15, (DI)(R12*1); \
	LEAQ (DI)(R11*4), DI

// TRANS8 is the body of the trans8 functions: eshift is log2 of the size of src's elements,
// load is LOADF32 or LOADBF16, and a step reads step bytes of each of the 8 rows (rows 0-3
// from SI, 4-7 from R10, R8 bytes apart, R9 = 3 R8).
#define TRANS8(eshift, load, step) \
	ARGS5(kb, CX, src, SI, ld, R8, dst, DI, dstride, R11); \
	SHLQ $eshift, R8; \
	SHLQ $2, R11; \
	LEAQ (R8)(R8*2), R9; \
	LEAQ (SI)(R8*4), R10; \
	LEAQ (R11)(R11*2), R12; \
	SHRQ $3, CX; \
	JEQ done; \
loop: \
	load((SI), Y0); \
	load((SI)(R8*1), Y1); \
	load((SI)(R8*2), Y2); \
	load((SI)(R9*1), Y3); \
	load((R10), Y4); \
	load((R10)(R8*1), Y5); \
	load((R10)(R8*2), Y6); \
	load((R10)(R9*1), Y7); \
	TRANS8X8; \
	ADDQ $step, SI; \
	ADDQ $step, R10; \
	DECQ CX; \
	JNE loop; \
done: \
	VZEROUPPER; \
	RET

// func kernel12x32AVX512(k int, a, b, c *float32, ldc int): C[0:12, 0:32] += A B, A k x 12
// (one row of 12 per step), B k x 32, C of row stride ldc; kernel12x32SetAVX512 stores C = A B
// (C not read). kernel6x16AVX2 and kernel6x16SetAVX2 are the same for a 6 x 16 tile.
TEXT ·kernel12x32AVX512(SB), NOSPLIT, $0-40
	TILE12x32(CROW)

TEXT ·kernel12x32SetAVX512(SB), NOSPLIT, $0-40
	TILE12x32(CSET)

TEXT ·kernel6x16AVX2(SB), NOSPLIT, $0-40
	TILE6x16(CROW)

TEXT ·kernel6x16SetAVX2(SB), NOSPLIT, $0-40
	TILE6x16(CSET)

// func fmaLoopAVX512(n int): n rounds of 16 independent ZMM multiply-adds
// (512 float32 operations a round: 16 lanes, a multiply and an add each).
TEXT ·fmaLoopAVX512(SB), NOSPLIT, $0-8
	MOVQ n+0(FP), CX
	ZERO12(VPXORD, Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27)
	ZERO4(VPXORD, Z28, Z29, Z30, Z31)
	ZERO2(VPXORD, Z0, Z1)
loop:
	FMA12(Z0, Z1, Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27)
	FMA4(Z0, Z1, Z28, Z29, Z30, Z31)
	DECQ CX
	JNE loop
	VZEROUPPER
	RET

// func fmaLoopAVX2(n int): n rounds of 12 independent YMM multiply-adds
// (192 float32 operations a round: 8 lanes, a multiply and an add each).
TEXT ·fmaLoopAVX2(SB), NOSPLIT, $0-8
	MOVQ n+0(FP), CX
	ZERO12(VXORPS, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15)
	ZERO2(VXORPS, Y0, Y1)
loop:
	FMA12(Y0, Y1, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15)
	DECQ CX
	JNE loop
	VZEROUPPER
	RET

// func dot4F32AVX512(k int, x *float32, w *float32, ldw int, out *float32)
// out[r] = sum over p < k of x[p] w[r*ldw+p] for r < 4; k a multiple of 16.
TEXT ·dot4F32AVX512(SB), NOSPLIT, $0-40
	DOT4(2, 4, VPXORD, DOTF32, Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, 64, 64, DOT4SUM512)

// func dot4BF16AVX512(k int, x *float32, w *uint16, ldw int, out *float32)
// out[r] = sum over p < k of x[p] w[r*ldw+p] for r < 4 (w bf16); k a multiple of 16.
TEXT ·dot4BF16AVX512(SB), NOSPLIT, $0-40
	DOT4(1, 4, VPXORD, DOTBF16, Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, 64, 32, DOT4SUM512)

// func dot4F32AVX2(k int, x *float32, w *float32, ldw int, out *float32)
// dot4F32AVX512's out[r] for k a multiple of 8.
TEXT ·dot4F32AVX2(SB), NOSPLIT, $0-40
	DOT4(2, 3, VXORPS, DOTF32, Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, 32, 32, DOT4SUM256)

// func dot4BF16AVX2(k int, x *float32, w *uint16, ldw int, out *float32)
// dot4BF16AVX512's out[r] (w bf16) for k a multiple of 8.
TEXT ·dot4BF16AVX2(SB), NOSPLIT, $0-40
	DOT4(1, 3, VXORPS, DOTBF16, Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, 32, 16, DOT4SUM256)

// func trans8F32AVX2(kb int, src *float32, ld int, dst *float32, dstride int)
// dst[p*dstride+r] = src[r*ld+p] for r < 8, p < kb; kb a multiple of 8 (AVX2).
TEXT ·trans8F32AVX2(SB), NOSPLIT, $0-40
	TRANS8(2, LOADF32, 32)

// func trans8BF16AVX2(kb int, src *uint16, ld int, dst *float32, dstride int)
// dst[p*dstride+r] = bf16 widened src[r*ld+p] for r < 8, p < kb; kb a multiple of 8 (AVX2).
TEXT ·trans8BF16AVX2(SB), NOSPLIT, $0-40
	TRANS8(1, LOADBF16, 16)

// func widenBF16AVX2(n int, dst *float32, src *uint16)
// dst[i] = the float32 of bf16 src[i] for i < n, n a positive multiple of 8.
TEXT ·widenBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ n+0(FP), CX
	MOVQ dst+8(FP), DI
	MOVQ src+16(FP), SI

widenloop:
	LOADBF16((SI), Y0)
	VMOVUPS Y0, (DI)
	ADDQ $16, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JNZ widenloop
	VZEROUPPER
	RET
