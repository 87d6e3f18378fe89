# refscope — plain Makefile, out-of-tree build in $(BUILD).
#
#   make            build build/librefscope.so and build/refscope
#   make deps       install missing Debian build dependencies (root) or print the command
#   make demo       deps + build + trace samples/demo.py + print reports
#   make check      deps + build + every test (Check unit tests, integration tests)
#   make bench      benchmarks: traced/untraced wall ratio, events/s, bytes/event
#   make fuzz       damaged traces against every report, under ASan/UBSan, at
#                   random and coverage-guided (libFuzzer)
#                   (FUZZ_SECONDS, default 300; make check runs a short round)
#
# New .c files in common/, preload/, analyzer/, tests/unit/ and tests/progs/
# are picked up automatically.

BUILD    ?= build
CC       ?= cc
PYTHON   ?= python3
PKGS      = libunwind libdw jansson check libzstd zlib
DEB_PKGS  = gcc make pkg-config libunwind-dev libdw-dev libelf-dev libjansson-dev \
            check libzstd-dev zlib1g-dev python3 clang libclang-rt-14-dev \
            libpython3.11-testsuite

WARN     := -Wall -Wextra -Werror -Wno-unused-parameter
CFLAGS   ?= -O2 -g
CPPFLAGS += -Iinclude -D_GNU_SOURCE
DEPFLAGS  = -MMD -MP

# pkg-config is only consulted when building (not for `make deps`).
pc = $(shell pkg-config $(1) $(2) 2>/dev/null)

COMMON_SRC   := $(wildcard common/*.c)
PRELOAD_SRC  := $(wildcard preload/*.c)
ANALYZER_SRC := $(wildcard analyzer/*.c)
UNIT_SRC     := $(wildcard tests/unit/check_*.c)
PROG_SRC     := $(wildcard tests/progs/*.c)

PRELOAD_OBJ  := $(PRELOAD_SRC:%.c=$(BUILD)/pic/%.o) $(COMMON_SRC:%.c=$(BUILD)/pic/%.o)
ANALYZER_OBJ := $(ANALYZER_SRC:%.c=$(BUILD)/obj/%.o) $(COMMON_SRC:%.c=$(BUILD)/obj/%.o)
ANALYZER_LIB_OBJ := $(filter-out $(BUILD)/obj/analyzer/main.o,$(ANALYZER_OBJ))
UNIT_BIN     := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
PROG_BIN     := $(PROG_SRC:tests/progs/%.c=$(BUILD)/tests/progs/%)

SHIM     := $(BUILD)/librefscope.so
CLI      := $(BUILD)/refscope

# -flto: the hooks call across files (stacks, pyver, emit) on every event;
# link-time optimization inlines those calls.
PRELOAD_CFLAGS := -fPIC -fvisibility=hidden -ftls-model=initial-exec -fno-builtin-malloc \
                  -fno-builtin-free -fno-builtin-calloc -fno-builtin-realloc -fno-omit-frame-pointer \
                  -flto=auto
PRELOAD_LIBS   := -ldl -lpthread $(call pc,--libs,libunwind)
ANALYZER_LIBS  := $(call pc,--libs,jansson libzstd libdw zlib) -lelf -lpthread -lm
CHECK_LIBS     := $(call pc,--libs,check)

# Fuzzing (tests/fuzz/): the analyzer again, under AddressSanitizer and
# UndefinedBehaviorSanitizer (gcc's own runtimes: no extra package).
SAN_FLAGS    := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
SAN_OBJ      := $(ANALYZER_LIB_OBJ:$(BUILD)/obj/%=$(BUILD)/san/%)
FUZZ         := $(BUILD)/tests/fuzz_reports
FUZZ_SECONDS ?= 300
FUZZ_SHARED  := tests/fuzz/reports.c
# Coverage-guided (libFuzzer): the analyzer built by clang, when there is one
# (`make deps` installs it; without it the test says it is skipped).
CLANG        := $(shell command -v clang 2>/dev/null)
COV_FLAGS    := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
COV_OBJ      := $(ANALYZER_LIB_OBJ:$(BUILD)/obj/%=$(BUILD)/cov/%)
COV_FUZZ     := $(if $(CLANG),$(BUILD)/tests/cov_reports)

.PHONY: all deps demo check unit integration bench fuzz clean
all: $(SHIM) $(CLI) $(PROG_BIN)

$(BUILD)/pic/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(PRELOAD_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Ianalyzer $(CFLAGS) $(WARN) $(call pc,--cflags,jansson libzstd libdw) $(DEPFLAGS) -c $< -o $@

$(SHIM): $(PRELOAD_OBJ)
	$(CC) $(CFLAGS) $(PRELOAD_CFLAGS) -shared -Wl,-z,nodelete -Wl,--version-script=preload/exports.map \
	    -o $@ $^ $(PRELOAD_LIBS)

$(CLI): $(ANALYZER_OBJ)
	$(CC) -o $@ $^ $(ANALYZER_LIBS)

$(BUILD)/tests/check_%: tests/unit/check_%.c tests/unit/check_run.h $(ANALYZER_LIB_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Ianalyzer -Ipreload $(CFLAGS) $(WARN) $(call pc,--cflags,check) -o $@ $(filter %.c %.o,$^) $(CHECK_LIBS) $(ANALYZER_LIBS)

$(BUILD)/san/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Ianalyzer -O1 -g $(SAN_FLAGS) $(WARN) $(call pc,--cflags,jansson libzstd libdw) $(DEPFLAGS) -c $< -o $@

$(FUZZ): tests/fuzz/fuzz_reports.c $(FUZZ_SHARED) $(SAN_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Ianalyzer -O1 -g $(SAN_FLAGS) $(WARN) -o $@ $^ $(ANALYZER_LIBS)

$(BUILD)/cov/%.o: %.c
	@mkdir -p $(@D)
	$(CLANG) $(CPPFLAGS) -Ianalyzer -O1 -g $(COV_FLAGS) $(WARN) $(call pc,--cflags,jansson libzstd libdw) $(DEPFLAGS) -c $< -o $@

$(BUILD)/tests/cov_reports: tests/fuzz/cov_reports.c $(FUZZ_SHARED) $(COV_OBJ)
	@mkdir -p $(@D)
	$(CLANG) $(CPPFLAGS) -Ianalyzer -O1 -g $(COV_FLAGS) -fsanitize=fuzzer $(WARN) -o $@ $^ $(ANALYZER_LIBS)

$(BUILD)/tests/progs/%: tests/progs/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -O1 -g $(WARN) -o $@ $< -lpthread -ldl

# ---- set-up ---------------------------------------------------------------------
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "deps: all build dependencies present"; \
	elif [ "$$(id -u)" = 0 ]; then echo "deps: installing$$missing"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null \
	  || { echo "deps: apt-get install failed for:$$missing" >&2; exit 1; }; \
	else echo "deps: missing packages; run as root: apt-get install -y$$missing" >&2; exit 1; fi

demo: deps
	@$(MAKE) --no-print-directory all
	@rm -f $(BUILD)/demo.*.rfs # an earlier demo's other images (a launcher script's, pyenv's shims')
	$(CLI) run -f -o $(BUILD)/demo.rfs -- $(PYTHON) samples/demo.py
	$(CLI) summary $(BUILD)/demo.rfs
	$(CLI) top --limit 8 $(BUILD)/demo.rfs
	$(CLI) gc $(BUILD)/demo.rfs | head -8
	$(CLI) leaks --limit 3 $(BUILD)/demo.rfs
	$(CLI) cycles $(BUILD)/demo.rfs | head -12
	@echo; echo "more: $(CLI) flamegraph -o $(BUILD)/demo.html $(BUILD)/demo.rfs; $(CLI) lifetimes $(BUILD)/demo.rfs; $(CLI) --help"

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; CK_DEFAULT_TIMEOUT=120 $$t; done

integration: all $(FUZZ) $(COV_FUZZ)
	$(PYTHON) tests/integration/run.py --build $(BUILD)

check: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

bench: deps
	@$(MAKE) --no-print-directory all
	$(PYTHON) bench/run.py --build $(BUILD)

fuzz: deps
	@$(MAKE) --no-print-directory all $(FUZZ) $(COV_FUZZ)
	REFSCOPE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTHON) tests/integration/run.py --build $(BUILD) -k fuzz

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
