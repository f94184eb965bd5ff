# tests/fuzz/fuzz.mk: libFuzzer targets (ASan + UBSan) for every parser,
# built with Debian's clang against the project's sources in $(BUILD)/fuzz/.
# Included by the top Makefile. See docs/RELIABILITY.md ("Fuzzing").
#
#   make fuzz-build                 build the targets
#   make fuzz-brief                 each target ~10 s on its corpus; fails on any finding (CI)
#   make fuzz-long FUZZ_SECONDS=N   each target N seconds (default 300)
#   make fuzz-long FUZZ_TARGETS="jsonl gguf" FUZZ_SECONDS=600
#
# Findings (crash-*, leak-*, timeout-*, oom-*) land in $(BUILD)/fuzz/findings/;
# new corpus entries in $(BUILD)/fuzz/work/<name>/ (the committed seeds in
# tests/fuzz/corpus/<name>/ are only read).

FUZZ_CC      ?= clang
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_TARGETS ?= json multipart jsonl safetensors gguf tokenizer query chat_template
FUZZ_SECONDS ?= 300
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
# OpenMP is left out: none of the parsers use it (clang ignores the pragmas).
# -Wno-string-concatenation: clang flags an intended one in gpu/dataset.c.
FUZZ_CFLAGS  := -std=gnu11 -O1 -g $(WARN) -Wno-unknown-pragmas -Wno-string-concatenation \
                -D_GNU_SOURCE \
                -I. -I$(BLAS_INC) -I$(PG_INC) -MMD -MP \
                -fsanitize=fuzzer-no-link $(FUZZ_SAN)
FUZZ_LDFLAGS := -fsanitize=fuzzer $(FUZZ_SAN)

FUZZ_ENGINE_SRC := $(BASE_SRC) gpu/half.c gpu/tensorfile.c gpu/gguf.c gpu/tokenizer.c gpu/tokenizer_io.c \
                   gpu/tokenizer_text.c gpu/tokenizer_hf.c gpu/tokenizer_decode.c \
                   gpu/dataset.c gpu/dataset_check.c
FUZZ_ENGINE_SRC += gpu/chat_template.c gpu/estimate.c gpu/arch_info.c
FUZZ_ENGINE_OBJ := $(FUZZ_ENGINE_SRC:%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_API_OBJ    := $(API_SRC:%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_SERVER_OBJ := $(filter-out $(FUZZ_DIR)/obj/server/main.o,$(SERVER_SRC:%.c=$(FUZZ_DIR)/obj/%.o)) \
                   $(FUZZ_DIR)/obj/gen/openapi_json.o $(FUZZ_DIR)/obj/gen/static_files.o
FUZZ_BINS       := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)

$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_DIR)/obj/gen/%.o: $(BUILD)/server/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Wno-overlength-strings -c $< -o $@

$(FUZZ_DIR)/libengine.a: $(FUZZ_ENGINE_OBJ)
	rm -f $@; ar rcs $@ $^

$(FUZZ_DIR)/libapi.a: $(FUZZ_API_OBJ)
	rm -f $@; ar rcs $@ $^

# Files: the input through a memfd or a temp directory.
FUZZ_FILE_TARGETS := jsonl safetensors gguf tokenizer chat_template
$(FUZZ_FILE_TARGETS:%=$(FUZZ_DIR)/fuzz_%): $(FUZZ_DIR)/fuzz_%: \
    $(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o $(FUZZ_DIR)/libengine.a
	$(FUZZ_CC) $(FUZZ_LDFLAGS) $^ -o $@ -ljansson -lm -lpthread

# HTTP: the server's objects (not main.c; http.o's real request flow, driven by
# fuzz_http.c), PostgreSQL and Redis "down" (fuzz_down.c).
FUZZ_SVC_LIBS := -Wl,--wrap=db_pool_acquire,--wrap=queue_ping,--wrap=queue_depth \
                 $(FUZZ_DIR)/libapi.a $(FUZZ_DIR)/libengine.a \
                 $(SVC_LIBS) -ljansson -lm -lpthread
$(FUZZ_DIR)/fuzz_json: $(FUZZ_DIR)/obj/tests/fuzz/fuzz_json.o $(FUZZ_DIR)/obj/tests/fuzz/fuzz_down.o \
    $(FUZZ_SERVER_OBJ) $(FUZZ_DIR)/libapi.a $(FUZZ_DIR)/libengine.a
	$(FUZZ_CC) $(FUZZ_LDFLAGS) $(filter %.o,$^) -o $@ $(FUZZ_SVC_LIBS)
$(FUZZ_DIR)/fuzz_multipart $(FUZZ_DIR)/fuzz_query: $(FUZZ_DIR)/fuzz_%: \
    $(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o $(FUZZ_DIR)/obj/tests/fuzz/fuzz_http.o \
    $(FUZZ_DIR)/obj/tests/fuzz/fuzz_down.o $(FUZZ_SERVER_OBJ) $(FUZZ_DIR)/libapi.a \
    $(FUZZ_DIR)/libengine.a
	$(FUZZ_CC) $(FUZZ_LDFLAGS) $(filter %.o,$^) -o $@ $(FUZZ_SVC_LIBS)

fuzz-build: $(FUZZ_BINS)

fuzz-brief: fuzz-build
	@tests/fuzz/run $(FUZZ_DIR) 10 $(FUZZ_TARGETS)

fuzz-long: fuzz-build
	@tests/fuzz/run $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

.PHONY: fuzz-build fuzz-brief fuzz-long
