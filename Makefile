# deltatune build. Explicit object lists, -MMD dependency files, build/ tree.
#
#   make            build the libraries, the programs and the unit tests
#   make test       install what is missing, build, run every suite (scripts/test-all)
#   make test-unit  the folder-layout check and the cmocka unit tests (seconds)
#   make check-layout  the folder dependency picture of docs/ARCHITECTURE.md holds
#   make test-integration  the HTTP API end to end on real stacks
#   make test-fault kill -9, SIGSTOP, Redis/PostgreSQL outages, disk full
#   make asan       the unit tests under AddressSanitizer + UBSan (build-asan/)
#   make test-asan-integration  the HTTP integration suite against ASan+UBSan binaries
#   make fuzz-brief libFuzzer targets for every parser, ~10 s each (tests/fuzz/)
#   make test-cuda-emu  the CUDA backend on the CPU under tests/cuda-emu (part of make test)
#   make check-gpu  CUDA-vs-CPU op and training tests (needs a GPU)
#   make fixtures   Python venv with PyTorch, regenerate reference fixtures
#   make check-exports  exports load in transformers / peft (needs the venv)
#   make check-gguf  GGUF exports read back with the gguf package (makes .venv-gguf)
#   make bench      CPU benchmark against PyTorch + PEFT
#   make bench-e2e  SmolLM2 on E2E: Delta-LoRA vs LoRA and its controls, seeds, BLEU/ROUGE-L
#   make bench-service  HTTP API under load (wrk): req/s, p50/p99, downloads
#   make bench-inference  SmolLM2 served (tokens/s, time to first token) vs transformers, llama.cpp
#   make demo       the main job end to end (see README)
#   make test-cli   the deltatune client commands (jobs, files, models) against a real stack
#   make test-client  the official openai SDKs (Python + Node) against a real stack
#   make test-browser the dashboard in headless chromium (Playwright) against a real stack
#   make test-schema  schemathesis (property-based + stateful) against the served OpenAPI contract

BUILD    ?= build
CC       ?= gcc
OPT      ?= -O2 -march=x86-64-v2
SAN      ?=
BLAS_INC ?= /usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_LIB ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
CUDA_HOME ?= /usr/local/cuda
NVCC     ?= $(shell command -v nvcc 2>/dev/null)

WARN     := -Wall -Wextra -Werror -Wno-unused-parameter
CFLAGS   += -std=gnu11 $(OPT) -g $(WARN) -fopenmp -D_GNU_SOURCE \
            -I. -I$(BLAS_INC) -MMD -MP $(SAN)
LDFLAGS  += -fopenmp $(SAN) -L$(BLAS_LIB) -Wl,-rpath,$(BLAS_LIB)
LDLIBS   += -lopenblas -ljansson -lm -lpthread

# Folders, bottom up (docs/ARCHITECTURE.md draws the picture; scripts/
# check-layout proves it): base/ <- gpu/, api/ <- server/, worker/, cli/.
# Each library is one archive; programs link archives top down.

# ---- the base (base/): errors, files, clock, randomness, ids, limits --------
BASE_SRC := base/dt.c base/file.c base/clock.c base/random.c base/id.c base/hparams.c
BASE_OBJ := $(BASE_SRC:%.c=$(BUILD)/%.o)
BASE_LIB := $(BUILD)/libdtbase.a

# ---- the engine (gpu/) --------------------------------------------------
ENGINE_SRC := gpu/half.c gpu/backend.c gpu/backend_cpu.c gpu/tensorfile.c gpu/dataset_check.c \
              gpu/gguf.c gpu/tokenizer.c gpu/tokenizer_io.c gpu/dataset.c gpu/modelio.c \
              gpu/chat_template.c \
              gpu/model.c gpu/model_pass.c gpu/generate.c gpu/chat_prompt.c gpu/optim.c gpu/train_data.c gpu/checkpoint.c \
              gpu/ckpt_export.c \
              gpu/train.c gpu/export.c gpu/cpu_tune.c gpu/cpu_gemm_small.c gpu/estimate.c
ENGINE_SRC += gpu/tokenizer_text.c gpu/tokenizer_hf.c gpu/tokenizer_decode.c
ENGINE_SRC += gpu/arch_info.c gpu/gguf_write.c
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)

# The CUDA backend compiles wherever nvcc and cuBLAS exist (-Werror). cuBLAS
# comes from the CUDA toolkit or, where the toolkit lacks it, from PyPI's
# nvidia-cublas wheel unpacked by scripts/install-deps into .cache/cublas.
# The ASan build and machines without them link a stub that reports "built
# without CUDA".
CUBLAS_HOME ?= $(firstword $(foreach d,$(CUDA_HOME) $(CURDIR)/.cache/cublas/nvidia/cu13,\
                 $(if $(wildcard $(d)/include/cublas_v2.h),$(d))))
CUDA_SRC := gpu/backend_cuda.cu gpu/cuda_attention.cu gpu/cuda_flash.cu gpu/cuda_optim.cu
# CUDA_EMU=1 compiles the same .cu files with g++ against the CUDA emulator's
# headers (tests/cuda-emu/) and links its runtime: the CUDA backend then runs
# on the CPU (make test-cuda-emu).
CUDA_EMU ?=
ifneq ($(CUDA_EMU),)
  CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o) $(BUILD)/tests/cuda-emu/emu.o
  LDLIBS   += -lstdc++
else ifeq ($(NVCC),)
  CUDA_OBJ := $(BUILD)/gpu/backend_cuda_stub.o
  $(info note: nvcc not found: building without the CUDA backend)
else ifeq ($(CUBLAS_HOME),)
  CUDA_OBJ := $(BUILD)/gpu/backend_cuda_stub.o
  $(info note: cuBLAS not found (run scripts/install-deps): building without the CUDA backend)
else ifneq ($(SAN),)
  CUDA_OBJ := $(BUILD)/gpu/backend_cuda_stub.o
else
  CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
  CUBLAS_LIB := $(firstword $(wildcard $(CUBLAS_HOME)/lib64 $(CUBLAS_HOME)/lib))
  LDFLAGS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 \
              -L$(CUBLAS_LIB) -Wl,-rpath,$(CUBLAS_LIB)
  LDLIBS   += $(if $(wildcard $(CUBLAS_LIB)/libcublas.so),-lcublas,-l:libcublas.so.13) \
              -lcudart -lstdc++
endif
NVCCFLAGS ?= -O2 -std=c++17 -I. -I$(CUBLAS_HOME)/include \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90 \
  -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter

LIB := $(BUILD)/libdtengine.a

# ---- the service library (api/), shared by server, worker and CLI ---------------
PG_INC   ?= $(shell pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
API_SRC  := api/config.c api/log.c api/errors.c api/auth.c api/objects.c \
            api/validate.c api/db_pool.c api/db_sql.c api/db_keys.c api/db_files.c \
            api/db_models.c api/db_idem.c api/db_workers.c api/db_jobs.c \
            api/db_events.c api/db_checkpoints.c api/queue.c api/sched.c \
             api/db_owners.c api/validate_chat.c api/db_exports.c
API_OBJ  := $(API_SRC:%.c=$(BUILD)/%.o)
API_LIB  := $(BUILD)/libdtapi.a
SVC_LIBS := -lmicrohttpd -lpq -lhiredis -lcrypto
CFLAGS   += -I$(PG_INC)

# ---- deltatune-server (server/) ---------------------------------------------------
SERVER_SRC := server/main.c server/http.c server/route.c server/routes.c \
              server/httputil.c server/files.c server/jobs.c server/models.c server/ops.c \
              server/ratelimit.c server/static.c server/sse.c server/jsonw.c \
              server/results.c server/chat.c server/exports.c \
              server/usage.c
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o) $(BUILD)/server/openapi_json.o \
              $(BUILD)/server/static_files.o
SERVER     := $(BUILD)/deltatune-server

# ---- deltatune (cli/): engine, admin and client commands -------------------
CLI_SRC := cli/main.c cli/engine.c cli/export.c cli/admin.c cli/client.c cli/client_http.c \
           cli/client_follow.c cli/client_download.c cli/client_chat.c
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
CLI     := $(BUILD)/deltatune
# deltatune-train: the same main.c with the engine's commands only, linked
# with the engine and the base alone (the lent GPU machine has no service
# libraries; scripts/gpu-check, bench/engine_gpu.py).
TRAIN   := $(BUILD)/deltatune-train

# ---- deltatune-worker (worker/): claim -> train -> checkpoint -> report ------
WORKER_SRC := worker/main.c worker/worker.c worker/glue.c worker/serve.c worker/models.c
WORKER_OBJ := $(WORKER_SRC:%.c=$(BUILD)/%.o)
WORKER     := $(BUILD)/deltatune-worker

# ---- tests --------------------------------------------------------------------
TEST_NAMES := test_dt test_backend_cpu test_tensorfile test_tokenizer test_chat_template \
              test_dataset test_model_ref test_train test_delta_lora test_gpu_ops test_gpu_train
API_TEST_NAMES := test_api_validate test_api_objects test_api_auth test_api_http
TEST_NAMES += $(API_TEST_NAMES)
TEST_NAMES += test_ratelimit test_jsonw test_worker test_hparams
TEST_NAMES += test_dropout test_generate test_gguf_write test_packing test_act_ckpt
TESTS      := $(TEST_NAMES:%=$(BUILD)/tests/%)

# The token rows the trainer sees (bench/dataset_rows.c; bench/engine_cpu.py).
BENCH_ROWS := $(BUILD)/bench_rows
all: $(BASE_LIB) $(LIB) $(API_LIB) $(CLI) $(TRAIN) $(SERVER) $(WORKER) $(TESTS) $(BENCH_ROWS)

# The engine and its tests alone (no HTTP/SQL/Redis libraries): what a GPU
# machine without our Debian -dev packages can build (scripts/gpu-check).
ENGINE_TESTS := test_dt test_backend_cpu test_tensorfile test_tokenizer test_chat_template \
                test_dataset test_model_ref test_train test_delta_lora test_gpu_ops test_gpu_train
ENGINE_TESTS += test_dropout test_generate test_gguf_write test_packing test_act_ckpt
BENCH_ATTN := $(BUILD)/bench_attention
engine: $(LIB) $(TRAIN) $(ENGINE_TESTS:%=$(BUILD)/tests/%) $(BENCH_ATTN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The CPU backend's elementwise loops (GELU, SiLU, softmax, AdamW) vectorize
# only with the dynamic cost model and with float selects if-converted, which
# -fno-trapping-math allows (nothing here reads floating-point exception
# flags). Results stay deterministic: same code, same order, every run.
$(BUILD)/gpu/backend_cpu.o: CFLAGS += -O3 -fno-trapping-math

ifneq ($(CUDA_EMU),)
EMU_CXXFLAGS := -std=c++17 $(OPT) -g -Wall -Wextra -Werror -Wno-unused-parameter \
                -Itests/cuda-emu -I. -I$(BLAS_INC) -MMD -MP $(SAN) $(EMU_COV)
$(BUILD)/gpu/%.o: gpu/%.cu
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -x c++ -c $< -o $@

$(BUILD)/tests/cuda-emu/%.o: tests/cuda-emu/%.cc
	@mkdir -p $(dir $@)
	$(CXX) $(filter-out $(EMU_COV),$(EMU_CXXFLAGS)) -c $< -o $@

# The emulator's own contract (barriers, shuffles, the faults it stops,
# cuBLAS's checks, bf16).
$(BUILD)/tests/cuda-emu/test_emu: $(BUILD)/tests/cuda-emu/test_emu.o $(BUILD)/tests/cuda-emu/emu.o
	$(CXX) $(LDFLAGS) $^ -o $@ -lopenblas -lm -lpthread
else
$(BUILD)/gpu/%.o: gpu/%.cu gpu/cuda_internal.cuh gpu/backend.h gpu/dt_math.h base/dt.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
endif

$(BASE_LIB): $(BASE_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(LIB): $(ENGINE_OBJ) $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(API_LIB): $(API_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

# api/openapi.yaml (the contract) -> build/openapi.json + an embedded copy.
$(BUILD)/server/openapi_json.c: api/openapi.yaml scripts/openapi-to-c
	@mkdir -p $(dir $@)
	scripts/openapi-to-c $< $(BUILD)/openapi.json $@

# server/static/ (the dashboard) -> an embedded copy with ETags.
$(BUILD)/server/static_files.c: $(wildcard server/static/*) scripts/static-to-c
	@mkdir -p $(dir $@)
	scripts/static-to-c server/static $@

$(SERVER): $(SERVER_OBJ) $(API_LIB) $(LIB) $(BASE_LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS)

$(CLI): $(CLI_OBJ) $(API_LIB) $(LIB) $(BASE_LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) -lcurl $(LDLIBS)

$(BUILD)/cli/main_engine.o: cli/main.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DDT_CLI_ENGINE_ONLY -c $< -o $@

$(TRAIN): $(BUILD)/cli/main_engine.o $(BUILD)/cli/engine.o $(BUILD)/cli/export.o $(LIB) $(BASE_LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# Attention timing on a GPU (bench/attention_gpu.c; scripts/gpu-check runs it).
$(BENCH_ATTN): $(BUILD)/bench/attention_gpu.o $(LIB) $(BASE_LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BENCH_ROWS): $(BUILD)/bench/dataset_rows.o $(LIB) $(BASE_LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(WORKER): $(WORKER_OBJ) $(API_LIB) $(LIB) $(BASE_LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS)

# The service's tests link the api library, the MHD-free server helpers and
# the service libraries.
$(API_TEST_NAMES:%=$(BUILD)/tests/%): $(BUILD)/tests/%: $(BUILD)/tests/unit/%.o \
    $(BUILD)/server/route.o $(BUILD)/server/httputil.o $(API_LIB) $(LIB) $(BASE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS) -lcmocka

# The limits table against the served contract (embedded openapi.json) and
# the engine's option check.
$(BUILD)/tests/test_hparams: $(BUILD)/tests/unit/test_hparams.o $(BUILD)/server/openapi_json.o \
                             $(LIB) $(BASE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcmocka

# The rate limiter alone (server/ratelimit.c has no MHD dependency).
$(BUILD)/tests/test_ratelimit: $(BUILD)/tests/unit/test_ratelimit.o $(BUILD)/server/ratelimit.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ -lm -lpthread -lcmocka

# The JSON writer alone (server/jsonw.c: jansson only).
$(BUILD)/tests/test_jsonw: $(BUILD)/tests/unit/test_jsonw.o $(BUILD)/server/jsonw.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ -ljansson -lm -lcmocka

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB) $(BASE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcmocka

# The worker's pure pieces (glue.c) with the service library.
$(BUILD)/tests/test_worker: $(BUILD)/tests/unit/test_worker.o $(BUILD)/worker/glue.o \
                            $(API_LIB) $(LIB) $(BASE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS) -lcmocka

# A local stack (PostgreSQL, Redis, server, one CPU worker) in .run/;
# installs what is missing first, as the test targets do (a fresh clone).
up: deps
	@$(MAKE) --no-print-directory all
	@scripts/up

down:
	@scripts/down

.PHONY: check-gguf up down

# ---- workflows ------------------------------------------------------------------
deps:
	@scripts/install-deps

# Every suite (scripts/test-all: unit, asan, integration, cli, client,
# browser, fault, fuzz-brief, ...); TEST_SUITES="unit integration" picks some.
test: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) scripts/test-all

# The cmocka unit tests alone, and the reference tests again with the BLAS
# kernels deltatune picks forced on (scripts/run-tests-blas).
test-unit: deps
	@$(MAKE) --no-print-directory all
	@scripts/check-layout $(BUILD)
	@scripts/run-tests $(BUILD) $(TEST_NAMES)
	@scripts/run-tests-blas $(BUILD)

# HTTP integration tests (tests/integration/test_*.py): each module starts its
# own stack (PostgreSQL, Redis, server, worker, tiny model) from $(BUILD).
test-integration: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) python3 -m unittest discover -s tests/integration -p 'test_*.py' -v

# Fault tests (tests/fault/): real processes killed, stopped and restarted
# (worker kill -9 / SIGSTOP, Redis, PostgreSQL, full disk, server mid-upload,
# claim races), each on its own short-lease stack; a few minutes. The
# disk-full test mounts a tmpfs (root only; skipped otherwise).
test-fault: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) python3 -W ignore::ResourceWarning -m unittest discover -s tests/fault -p 'test_*.py' -v

# Valgrind (tests/leak/): server and worker under valgrind over a full job
# lifecycle; no definite/indirect leak, no memory error (about a minute).
test-valgrind: deps
	@$(MAKE) --no-print-directory all
	@tests/leak/setup
	@BUILD=$(BUILD) python3 -m unittest discover -s tests/leak -p 'test_*.py' -v

ASAN_SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 SAN="$(ASAN_SAN)" all
	@ASAN_OPTIONS=detect_leaks=1 scripts/run-tests build-asan $(TEST_NAMES)

# The HTTP integration suite against server, worker and CLI built with
# ASan + UBSan; any sanitizer report fails it (tests/asan/run-integration).
test-asan-integration: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 SAN="$(ASAN_SAN)" all
	@tests/asan/run-integration build-asan

# The official openai SDKs (Python in .venv-client, Node in tests/client/node)
# against a real stack: tests/client/setup installs them (pinned, idempotent).
test-client: deps
	@$(MAKE) --no-print-directory all
	@tests/client/setup
	@scripts/make-venv
	@BUILD=$(BUILD) .venv-client/bin/python -m unittest discover -s tests/client -p 'test_*.py' -v

# The dashboard (server/static/) in Debian's headless chromium driven by
# Playwright for Python (.venv-browser; tests/browser/setup installs both,
# pinned, idempotent; no browser download), and the server side of it
# (static files, the event stream). Screenshots: $(BUILD)/browser-artifacts/.
test-browser: deps
	@$(MAKE) --no-print-directory $(SERVER) $(WORKER) $(CLI)
	@tests/browser/setup
	@BUILD=$(BUILD) .venv-browser/bin/python -m unittest discover -s tests/browser -p 'test_*.py' -v

# Schemathesis (.venv-schema; tests/schema/setup, pinned, idempotent) against
# GET /v1/openapi.json of a real stack: every operation, then the stateful
# phase over the contract's links; JUnit XML parsed by tests/schema/.
test-schema: deps
	@$(MAKE) --no-print-directory all
	@tests/schema/setup
	@BUILD=$(BUILD) .venv-schema/bin/python -m unittest discover -s tests/schema -p 'test_*.py' -v

# The client commands (deltatune jobs | files | models list | download) against
# a real stack (tests/cli/; Python standard library only).
test-cli: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) python3 -m unittest discover -s tests/cli -p 'test_*.py' -v

# The folder dependency picture (docs/ARCHITECTURE.md) holds for includes
# and links; part of test-unit.
check-layout: all
	@scripts/check-layout $(BUILD)

# The CUDA backend on the CPU under the emulator (tests/cuda-emu/run): the
# op and training tests against the CPU backend in two thread orders, the op
# test under ASan + UBSan, and out-of-memory injection. A few minutes.
EMU_TESTS := test_gpu_ops test_gpu_train test_packing test_act_ckpt
test-cuda-emu: deps
	@$(MAKE) --no-print-directory BUILD=build-emu CUDA_EMU=1 \
	  $(EMU_TESTS:%=build-emu/tests/%) build-emu/deltatune-train \
	  build-emu/tests/cuda-emu/test_emu build-emu/deltatune build-emu/deltatune-server \
	  build-emu/deltatune-worker
	@$(MAKE) --no-print-directory BUILD=build-emu-asan CUDA_EMU=1 OPT=-O1 SAN="$(ASAN_SAN)" \
	  build-emu-asan/tests/test_gpu_ops build-emu-asan/deltatune-train
	@tests/cuda-emu/run build-emu build-emu-asan

check-gpu:
	@$(MAKE) --no-print-directory all
	@DT_REQUIRE_GPU=1 scripts/run-tests $(BUILD) test_gpu_ops test_gpu_train

fixtures:
	@scripts/make-venv
	@.venv/bin/python tests/reference/make_fixtures.py tests/fixtures
	@.venv/bin/python tests/reference/make_tokenizer_fixtures.py
	@.venv/bin/python tests/reference/make_tensorfile_fixtures.py

check-exports: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) scripts/check-exports

# GGUF exports (deltatune export --gguf) read back with llama.cpp's gguf
# package: metadata, tokenizer, tensor names, types, shapes and values.
check-gguf: all
	@[ -x .venv-gguf/bin/python ] && .venv-gguf/bin/python -c 'import numpy, gguf' 2>/dev/null || \
	  { python3 -m venv .venv-gguf && .venv-gguf/bin/pip install -q numpy gguf; }
	@BUILD=$(BUILD) .venv-gguf/bin/python -m unittest discover -s tests/gguf -p 'test_*.py' -v

bench: all
	@scripts/make-venv
	@.venv/bin/python bench/engine_cpu.py

bench-e2e: all
	@scripts/install-deps
	@[ -x .venv-e2e/bin/python ] && .venv-e2e/bin/python -c 'import numpy, sacrebleu, rouge_score, safetensors' 2>/dev/null || \
	  { python3 -m venv .venv-e2e && .venv-e2e/bin/pip install -q numpy sacrebleu rouge-score safetensors; }
	@.venv-e2e/bin/python bench/e2e_smollm2.py $(E2E_ARGS)

bench-service: all
	@BUILD=$(BUILD) python3 bench/service.py

# Inference (bench/inference.py): streamed completions from a serving worker
# against transformers' generate (.venv) and llama.cpp (.venv-llama: builds
# llama-cpp-python from PyPI, 15-30 min on 2 cores; LLAMA=0 skips llama.cpp).
# BENCH_ARGS="--quick" for a smoke run.
LLAMA ?= 1
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
               -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF
bench-inference: all
	@scripts/install-deps
	@scripts/make-venv
	@if [ "$(LLAMA)" != 0 ]; then \
	  [ -x .venv-llama/bin/python ] && .venv-llama/bin/python -c 'import numpy, llama_cpp' 2>/dev/null || \
	  { echo "bench-inference: building llama-cpp-python into .venv-llama (15-30 min; LLAMA=0 skips)"; \
	    python3 -m venv .venv-llama && .venv-llama/bin/pip install -q numpy && \
	    CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	      .venv-llama/bin/pip install -q llama-cpp-python==0.3.36; }; fi
	@BUILD=$(BUILD) python3 bench/inference.py $(if $(filter 0,$(LLAMA)),--no-llama) $(BENCH_ARGS)

demo: deps all
	@scripts/demo

clean:
	rm -rf $(BUILD) build-asan build-emu build-emu-asan

.PHONY: check-layout test-cuda-emu test-asan-integration test-unit test-cli test-fault test-valgrind test-client test-browser test-schema check-exports all engine deps test test-integration asan check-gpu fixtures bench bench-e2e bench-service bench-inference demo clean

# libFuzzer targets (clang, ASan + UBSan): make fuzz-build | fuzz-brief | fuzz-long
include tests/fuzz/fuzz.mk

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
