/* emu_device.cpp: every CUDA launcher and kernel of kernels/cuda except the row sampler
 * (sample_rows.cu, whose stand-in version stays), compiled for the CPU through
 * tests/gpu/emu_cuda.h with deferred launches (NS_EMU_DEFERRED: each kernel run is queued
 * on the stand-in's stream, so it runs in stream order, at synchronization, and inside
 * CUDA graph recordings), the launchers renamed emu_ns_cuda_* (emu_device.h). Linked
 * into build/unit-cudamock-emu only. */
#define NS_EMU_DEFERRED 1
#include "../gpu/emu_cuda.h"

#define ns_cuda_quant_rows_fp8 emu_ns_cuda_quant_rows_fp8
#define ns_cuda_dequant_row emu_ns_cuda_dequant_row
#define ns_cuda_f32_to_bf16 emu_ns_cuda_f32_to_bf16
#define ns_cuda_f32_to_bf16_split emu_ns_cuda_f32_to_bf16_split
#define ns_cuda_rmsnorm emu_ns_cuda_rmsnorm
#define ns_cuda_rope emu_ns_cuda_rope
#define ns_cuda_qkv_split_rope emu_ns_cuda_qkv_split_rope
#define ns_cuda_swiglu emu_ns_cuda_swiglu
#define ns_cuda_add_rmsnorm emu_ns_cuda_add_rmsnorm
#define ns_cuda_swiglu_bf16 emu_ns_cuda_swiglu_bf16
#define ns_cuda_rmsnorm_fp8 emu_ns_cuda_rmsnorm_fp8
#define ns_cuda_add_rmsnorm_fp8 emu_ns_cuda_add_rmsnorm_fp8
#define ns_cuda_swiglu_bf16_fp8 emu_ns_cuda_swiglu_bf16_fp8
#define ns_cuda_add emu_ns_cuda_add
#define ns_cuda_add_bias emu_ns_cuda_add_bias
#define ns_cuda_embed emu_ns_cuda_embed
#define ns_cuda_tokens_from_ids emu_ns_cuda_tokens_from_ids
#define ns_cuda_gather_rows emu_ns_cuda_gather_rows
#define ns_cuda_kv_store emu_ns_cuda_kv_store
#define ns_cuda_kv_store_fp8 emu_ns_cuda_kv_store_fp8
#define ns_cuda_attention_paged emu_ns_cuda_attention_paged
#define ns_cuda_attention_paged_fp8 emu_ns_cuda_attention_paged_fp8
#define ns_cuda_sample_greedy emu_ns_cuda_sample_greedy
#define ns_cuda_expand_scales emu_ns_cuda_expand_scales
#define ns_cuda_scale_outer emu_ns_cuda_scale_outer

#include "../../kernels/cuda/add.cu"
#include "../../kernels/cuda/attention.cu"
#include "../../kernels/cuda/attention_tc.cu"
#include "../../kernels/cuda/embed.cu"
#include "../../kernels/cuda/fp8.cu"
#include "../../kernels/cuda/qkv.cu"
#include "../../kernels/cuda/quant.cu"
#include "../../kernels/cuda/rmsnorm.cu"
#include "../../kernels/cuda/rope.cu"
#include "../../kernels/cuda/sample.cu"
#include "../../kernels/cuda/swiglu.cu"

#include "emu_device.h"
