/* backend_cuda.h: the CUDA backend (engine/backend_cuda.c over kernels/cuda and cuBLAS),
 * present when the build defines NS_HAVE_CUDA (make with nvcc on PATH). ns_backend_create
 * ("cuda", "auto") in engine/backend_cpu.c is the usual way in; these are for it and for
 * tests. */
#ifndef NS_BACKEND_CUDA_H
#define NS_BACKEND_CUDA_H

#include "backend.h"

#ifdef NS_HAVE_CUDA
/* Number of CUDA devices in *n_devices (0 on any error). Returns NS_ERR_BACKEND with
 * "no CUDA device: <cuda error string>" when the runtime reports an error (no driver,
 * no device) or no device; never aborts. Thread-safe. */
ns_status ns_backend_cuda_device_count(int *n_devices, ns_error *err);

/* Creates a CUDA backend on device `device` (0-based): its own stream, cuBLAS handle and
 * memory; N devices are N backends. Errors: NS_ERR_BACKEND "no CUDA device: ..." without
 * a device, NS_ERR_INVALID for a device index out of range, NS_ERR_BACKEND for a failing
 * runtime or cuBLAS call (named, with the CUDA error string). Free with
 * ns_backend_destroy. */
ns_status ns_backend_cuda_create(int device, ns_backend **out, ns_error *err);

/* For tensor-parallel communication (tp_nccl.c): b's device, or -1 when b is not a CUDA
 * backend; its stream (a cudaStream_t); whether an error is recorded; and recording one
 * (NS_ERR_BACKEND "cuda backend: <what>", returned by b's next synchronizing call). */
int ns_backend_cuda_device(const ns_backend *b);
void *ns_backend_cuda_stream(ns_backend *b);
bool ns_backend_cuda_failed(const ns_backend *b);
void ns_backend_cuda_fail(ns_backend *b, const char *what);
#endif

#endif
