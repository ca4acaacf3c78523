/* check_fp8_format.cpp: kernels/cpu/fp8.h's E4M3 encoding and decoding against CUDA's own
 * host conversions (cuda_fp8.h: __nv_cvt_float_to_fp8 with __NV_SATFINITE and __NV_E4M3,
 * __nv_cvt_fp8_to_halfraw), so that the codes the FP8 path writes mean to cuBLASLt what
 * they mean to the CPU references. Decoding: all 256 codes. Encoding: every code's value,
 * the midpoints between neighbouring codes (ties) and one float step either side of each,
 * and a sweep over every 97th float bit pattern (44 million values; all 2^32 agreed when
 * this was written, in about 30 s). Built where the CUDA headers are (make test). */
#include <cuda_fp8.h>

#include <cmath>
#include <cstdio>
#include <cstring>

extern "C" {
#include "fp8.h"
}

static long n_checked, n_bad;

static void check(float x) {
    __nv_fp8_storage_t want = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    uint8_t got = ns_fp8_e4m3_from_float(x);
    n_checked++;
    if (got != want && n_bad++ < 10)
        std::printf("FAIL encode %a (bits %08x): %02x, CUDA %02x\n", (double)x, ns_fp8_float_bits(x), got, want);
}

int main() {
    int bad_decode = 0;
    for (int q = 0; q < 256; q++) {
        __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)q, __NV_E4M3);
        float want = __half2float(__half(h)), got = ns_fp8_e4m3_to_float((uint8_t)q);
        if (!(want == got || (std::isnan(want) && std::isnan(got))) && bad_decode++ < 10)
            std::printf("FAIL decode %02x: %g, CUDA %g\n", q, (double)got, (double)want);
    }
    for (int q = 0; q < 256; q++) {
        if ((q & 0x7f) == 0x7f) continue;
        const float v = ns_fp8_e4m3_to_float((uint8_t)q);
        check(v);
        const float next = (q & 0x7f) == 0x7e ? 480.0f * (q & 0x80 ? -1.0f : 1.0f) : ns_fp8_e4m3_to_float((uint8_t)(q + 1));
        const float mid = 0.5f * (v + next); /* exact: neighbours differ in few bits */
        check(mid);
        check(std::nextafter(mid, 0.0f));
        check(std::nextafter(mid, 2.0f * mid));
    }
    for (float x : {INFINITY, -INFINITY, NAN, -NAN, 464.0f, -464.0f, 1e30f, 0x1p-10f, 0x1p-11f, -0.0f})
        check(x);
    for (uint64_t u = 0; u < (1ull << 32); u += 97) {
        uint32_t b = (uint32_t)u;
        float x;
        std::memcpy(&x, &b, 4);
        check(x);
    }
    std::printf("%s fp8 e4m3 against cuda_fp8.h: 256 codes decoded (%d differ), %ld values encoded (%ld differ)\n",
                bad_decode || n_bad ? "FAIL" : "ok  ", bad_decode, n_checked, n_bad);
    std::printf("%d passed, %d failed, 0 skipped\n", bad_decode || n_bad ? 0 : 1, bad_decode || n_bad ? 1 : 0);
    return bad_decode || n_bad ? 1 : 0;
}
