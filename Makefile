# deltatune build. Explicit object lists, -MMD dependency files, build/ tree.
#
#   make            build the engine library, the `deltatune` CLI and tests
#   make test       install what is missing, build, run every test
#   make asan       the same tests under AddressSanitizer + UBSan (build-asan/)
#   make check-gpu  CUDA-vs-CPU op and training tests (needs a GPU)
#   make fixtures   Python venv with PyTorch, regenerate reference fixtures
#   make check-exports  exports load in transformers / peft (needs the venv)
#   make bench      CPU benchmark against PyTorch + PEFT
#   make demo       the main job end to end (see README)

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
            -I. -Igpu -I$(BLAS_INC) -MMD -MP $(SAN)
LDFLAGS  += -fopenmp $(SAN) -L$(BLAS_LIB) -Wl,-rpath,$(BLAS_LIB)
LDLIBS   += -lopenblas -ljansson -lm -lpthread

# ---- the engine (gpu/) --------------------------------------------------
ENGINE_SRC := gpu/dt.c gpu/backend.c gpu/backend_cpu.c gpu/tensorfile.c \
              gpu/gguf.c gpu/tokenizer.c gpu/tokenizer_io.c gpu/dataset.c gpu/modelio.c \
              gpu/model.c gpu/model_pass.c gpu/train.c gpu/export.c gpu/cpu_tune.c
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)

# The CUDA backend compiles wherever nvcc and cuBLAS exist (-Werror). cuBLAS
# comes from the CUDA toolkit or, where the toolkit lacks it, from PyPI's
# nvidia-cublas wheel unpacked by scripts/install-deps into .cache/cublas.
# The ASan build and machines without them link a stub that reports "built
# without CUDA".
CUBLAS_HOME ?= $(firstword $(foreach d,$(CUDA_HOME) $(CURDIR)/.cache/cublas/nvidia/cu13,\
                 $(if $(wildcard $(d)/include/cublas_v2.h),$(d))))
CUDA_SRC := gpu/backend_cuda.cu gpu/cuda_attention.cu
ifeq ($(NVCC),)
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
NVCCFLAGS ?= -O2 -std=c++17 -I. -Igpu -I$(CUBLAS_HOME)/include \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90 \
  -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter

LIB := $(BUILD)/libdtengine.a

# ---- the service library (api/), shared by server, worker and CLI ---------------
PG_INC   ?= $(shell pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
API_SRC  := api/config.c api/log.c api/errors.c api/auth.c api/objects.c \
            api/validate.c api/db.c api/db_jobs.c api/db_sql.c api/queue.c api/admin.c
API_OBJ  := $(API_SRC:%.c=$(BUILD)/%.o)
API_LIB  := $(BUILD)/libdtapi.a
SVC_LIBS := -lmicrohttpd -lpq -lhiredis -lcrypto
CFLAGS   += -I$(PG_INC)

# ---- deltatune-server (server/) ---------------------------------------------------
SERVER_SRC := server/main.c server/http.c server/route.c server/routes.c \
              server/httputil.c server/files.c server/jobs.c server/models.c server/ops.c
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o) $(BUILD)/server/openapi_json.o
SERVER     := $(BUILD)/deltatune-server

# ---- programs ---------------------------------------------------------------
CLI_SRC := worker/cli.c gpu/cli_train.c
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
CLI     := $(BUILD)/deltatune

# ---- tests --------------------------------------------------------------------
TEST_NAMES := test_dt test_backend_cpu test_tensorfile test_tokenizer \
              test_dataset test_model_ref test_train test_gpu_ops test_gpu_train
API_TEST_NAMES := test_api_validate test_api_objects test_api_auth test_api_http
TEST_NAMES += $(API_TEST_NAMES)
TESTS      := $(TEST_NAMES:%=$(BUILD)/tests/%)

all: $(LIB) $(API_LIB) $(CLI) $(SERVER) $(TESTS)

# The engine and its tests alone (no HTTP/SQL/Redis libraries): what a GPU
# machine without our Debian -dev packages can build (scripts/gpu-check).
ENGINE_TESTS := test_dt test_backend_cpu test_tensorfile test_tokenizer \
                test_dataset test_model_ref test_train test_gpu_ops test_gpu_train
engine: $(LIB) $(ENGINE_TESTS:%=$(BUILD)/tests/%)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The CPU backend's elementwise loops (GELU, SiLU, softmax, AdamW) vectorize
# only with the dynamic cost model and with float selects if-converted, which
# -fno-trapping-math allows (nothing here reads floating-point exception
# flags). Results stay deterministic: same code, same order, every run.
$(BUILD)/gpu/backend_cpu.o: CFLAGS += -O3 -fno-trapping-math

$(BUILD)/gpu/%.o: gpu/%.cu gpu/cuda_internal.cuh gpu/backend.h gpu/dt_math.h gpu/dt.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(LIB): $(ENGINE_OBJ) $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

$(API_LIB): $(API_OBJ)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

# api/openapi.yaml (the contract) -> build/openapi.json + an embedded copy.
$(BUILD)/server/openapi_json.c: api/openapi.yaml scripts/openapi-to-c
	@mkdir -p $(dir $@)
	scripts/openapi-to-c $< $(BUILD)/openapi.json $@

$(SERVER): $(SERVER_OBJ) $(API_LIB) $(LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS)

$(CLI): $(CLI_OBJ) $(API_LIB) $(LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS)

# The service's tests link the api library, the MHD-free server helpers and
# the service libraries.
$(API_TEST_NAMES:%=$(BUILD)/tests/%): $(BUILD)/tests/%: $(BUILD)/tests/unit/%.o \
    $(BUILD)/server/route.o $(BUILD)/server/httputil.o $(API_LIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS) -lcmocka

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcmocka

# ---- the worker (worker/): claim -> train -> checkpoint -> report -------------------
WORKER_SRC := worker/main.c worker/worker.c worker/glue.c
WORKER_OBJ := $(WORKER_SRC:%.c=$(BUILD)/%.o)
WORKER     := $(BUILD)/deltatune-worker
TEST_NAMES += test_worker

all: $(WORKER) $(BUILD)/tests/test_worker

$(WORKER): $(WORKER_OBJ) $(API_LIB) $(LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS)

# The worker's pure pieces (glue.c) with the service library.
$(BUILD)/tests/test_worker: $(BUILD)/tests/unit/test_worker.o $(BUILD)/worker/glue.o \
                            $(API_LIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(SVC_LIBS) $(LDLIBS) -lcmocka

# A local stack (PostgreSQL, Redis, server, one CPU worker) in .run/.
up: all
	@scripts/up

down:
	@scripts/down

.PHONY: up down

# ---- workflows ------------------------------------------------------------------
deps:
	@scripts/install-deps

test: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-tests $(BUILD) $(TEST_NAMES)

asan:
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
	@ASAN_OPTIONS=detect_leaks=1 scripts/run-tests build-asan $(TEST_NAMES)

check-gpu:
	@$(MAKE) --no-print-directory all
	@DT_REQUIRE_GPU=1 scripts/run-tests $(BUILD) test_gpu_ops test_gpu_train

fixtures:
	@scripts/make-venv
	@.venv/bin/python tests/reference/make_fixtures.py tests/fixtures
	@.venv/bin/python tests/reference/make_tokenizer_fixtures.py
	@.venv/bin/python tests/reference/make_tensorfile_fixtures.py

check-exports: all
	@scripts/check-exports

bench: all
	@scripts/make-venv
	@.venv/bin/python bench/engine_cpu.py

demo: deps all
	@scripts/demo

clean:
	rm -rf $(BUILD) build-asan

.PHONY: check-exports all engine deps test asan check-gpu fixtures bench demo clean

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
