//go:build amd64

#include "textflag.h"

// Offsets of the constants in the table R8 points to (vecmath_amd64.go), 32 bytes each.
#define KMIN 0
#define KMAX 32
#define KLOG2E 64
#define KLN2HI 96
#define KLN2LO 128
#define KC0 160
#define KC1 192
#define KC2 224
#define KC3 256
#define KC4 288
#define KC5 320
#define KONE 352
#define KBIAS 384

// ARGS loads the first three arguments, n, dst and src, into CX, DI and SI.
#define ARGS \
	MOVQ n+0(FP), CX; \
	MOVQ dst+8(FP), DI; \
	MOVQ src+16(FP), SI

// EXP8 sets Y6 = e^Y0 in eight lanes, step for step as Exp32 (Y1-Y5, Y7 scratch; Y13 holds
// the upper clamp): lanes below the lower bound give 0, NaN lanes stay NaN.
#define EXP8 \
	VMINPS Y0, Y13, Y0; \
	VCMPPS $0x1D, KMIN(R8), Y0, Y1; \
	VCMPPS $3, Y0, Y0, Y2; \
	VMULPS KLOG2E(R8), Y0, Y3; \
	VROUNDPS $0, Y3, Y3; \
	VCVTTPS2DQ Y3, Y4; \
	VMOVAPS Y0, Y5; \
	VFNMADD231PS KLN2HI(R8), Y3, Y5; \
	VFNMADD231PS KLN2LO(R8), Y3, Y5; \
	VMOVUPS KC0(R8), Y6; \
	VFMADD213PS KC1(R8), Y5, Y6; \
	VFMADD213PS KC2(R8), Y5, Y6; \
	VFMADD213PS KC3(R8), Y5, Y6; \
	VFMADD213PS KC4(R8), Y5, Y6; \
	VFMADD213PS KC5(R8), Y5, Y6; \
	VMULPS Y5, Y5, Y7; \
	VFMADD213PS Y5, Y7, Y6; \
	VADDPS KONE(R8), Y6, Y6; \
	VPADDD KBIAS(R8), Y4, Y4; \
	VPSLLD $23, Y4, Y4; \
	VMULPS Y4, Y6, Y6; \
	VANDPS Y1, Y6, Y6; \
	VANDPS Y2, Y0, Y2; \
	VORPS Y2, Y6, Y6

// func sigmoidAVX2(n int, dst, src *float32, k *[kLen][8]float32)
// dst[i] = 1 / (1 + e^-src[i]) for i < n, n a positive multiple of 8, as Sigmoid32: with
// e = e^-|x|, 1 / (1 + e) where x >= 0 and e / (1 + e) elsewhere.
TEXT ·sigmoidAVX2(SB), NOSPLIT, $0-32
	ARGS
	MOVQ k+24(FP), R8
	VMOVUPS KMAX(R8), Y13
	VXORPS Y12, Y12, Y12
	MOVL $0x80000000, AX
	MOVD AX, X11
	VPBROADCASTD X11, Y11

sigloop:
	VMOVUPS (SI), Y10
	VORPS Y11, Y10, Y0
	EXP8
	VCMPPS $0x1D, Y12, Y10, Y9
	VADDPS KONE(R8), Y6, Y8
	VBLENDVPS Y9, KONE(R8), Y6, Y7
	VDIVPS Y8, Y7, Y7
	VMOVUPS Y7, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JNZ sigloop
	VZEROUPPER
	RET

// SUM8 adds the eight float32 lanes of Y6, widened, to the float64 accumulators Y11 and Y12
// (Y7-Y9 scratch).
#define SUM8 \
	VCVTPS2PD X6, Y8; \
	VEXTRACTF128 $1, Y6, X7; \
	VCVTPS2PD X7, Y9; \
	VADDPD Y8, Y11, Y11; \
	VADDPD Y9, Y12, Y12

// SUMOUT adds up Y11 and Y12 into the low float64 of X11.
#define SUMOUT \
	VADDPD Y12, Y11, Y11; \
	VEXTRACTF128 $1, Y11, X12; \
	VADDPD X12, X11, X11; \
	VHADDPD X11, X11, X11

// func expAVX2(n int, dst, src *float32, shift, scale float32, k *[kLen][8]float32) float64
// dst[i] = e^(src[i] - shift) * scale for i < n, n a positive multiple of 8, and their sum:
// each group of eight widened to float64 and added to two four-lane accumulators.
TEXT ·expAVX2(SB), NOSPLIT, $0-48
	ARGS
	VBROADCASTSS shift+24(FP), Y15
	VBROADCASTSS scale+28(FP), Y14
	MOVQ k+32(FP), R8
	VMOVUPS KMAX(R8), Y13
	VXORPD Y11, Y11, Y11
	VXORPD Y12, Y12, Y12

exploop:
	VMOVUPS (SI), Y0
	VSUBPS Y15, Y0, Y0
	EXP8
	VMULPS Y14, Y6, Y6
	VMOVUPS Y6, (DI)
	SUM8
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JNZ exploop
	SUMOUT
	VZEROUPPER
	MOVSD X11, ret+40(FP)
	RET

// func maxAVX2(n int, src *float32) (m float32, nan bool)
// The largest of src[:n], n a positive multiple of 8, and whether one of them is NaN.
TEXT ·maxAVX2(SB), NOSPLIT, $0-21
	MOVQ n+0(FP), CX
	MOVQ src+8(FP), SI
	VMOVUPS (SI), Y0
	VCMPPS $3, Y0, Y0, Y1
	ADDQ $32, SI
	SUBQ $8, CX
	JZ maxdone

maxloop:
	VMOVUPS (SI), Y2
	VMAXPS Y2, Y0, Y0
	VCMPPS $3, Y2, Y2, Y3
	VORPS Y3, Y1, Y1
	ADDQ $32, SI
	SUBQ $8, CX
	JNZ maxloop

maxdone:
	VEXTRACTF128 $1, Y0, X2
	VMAXPS X2, X0, X0
	VPERMILPS $0x4E, X0, X2
	VMAXPS X2, X0, X0
	VPERMILPS $0xB1, X0, X2
	VMAXPS X2, X0, X0
	VMOVMSKPS Y1, AX
	VZEROUPPER
	MOVSS X0, m+16(FP)
	TESTL AX, AX
	SETNE nan+20(FP)
	RET
