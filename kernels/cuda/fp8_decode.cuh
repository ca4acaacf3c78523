/* fp8_decode.cuh: two e4m3 codes (the low byte first) as floats, exactly: one conversion
 * to half2 on sm_89 and later (older devices decode through cuda_fp8.h's software path);
 * the emulator (tests/gpu/emu_cuda.h, NS_CUDA_EMU) decodes with kernels/cpu/fp8.h. Used by
 * the attention kernels that read the FP8 KV cache (attention.cu, attention_tc.cu). */
#ifndef NS_CUDA_FP8_DECODE_CUH
#define NS_CUDA_FP8_DECODE_CUH

#ifdef NS_CUDA_EMU
#include "fp8.h"
#else
#include <cuda_fp8.h>
#endif

static __device__ __forceinline__ float2 fp8x2_to_float2(uint32_t two) {
#ifdef NS_CUDA_EMU
    return make_float2(ns_fp8_e4m3_to_float((uint8_t)(two & 0xffu)), ns_fp8_e4m3_to_float((uint8_t)((two >> 8) & 0xffu)));
#else
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
    return __half22float2(__half2(h));
#endif
}

#endif
