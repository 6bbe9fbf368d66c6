# Two commands on a fresh machine:
#   make demo   install, then export a zoo model, optimize it and write out/report.html
#   make test   install, then run the test suite (screenshots of the report page: out/test-artifacts/)
PY ?= python3
OUT ?= out
DEMO_STAMP := .install-demo.stamp
TEST_STAMP := .install-test.stamp

# Debian packages: Graphviz draws the report's graph (demo and tests); Chromium renders the
# page in the tests only; valgrind (cachegrind) measures the DRAM traffic of plan builds in the tests.
DEMO_PACKAGES := graphviz fonts-dejavu-core
TEST_PACKAGES := $(DEMO_PACKAGES) chromium valgrind

.PHONY: install install-test demo lint test test-heavy clean

# apt-get only what is missing (as root; elsewhere it says what to install): $(call system,COMMANDS,PACKAGES)
define system
	@for c in $(1); do command -v $$c >/dev/null || missing=1; done; [ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends $(2) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(2); }; \
	  else echo "fuser needs $(2) (Debian package names): install them"; exit 1; fi; }
endef

# A stamp outlives its packages when the Python environment is replaced under this tree (a
# machine reset): then it is stale, and the install runs again. -I: this tree's own fuser/
# folder is not an installed fuser.
installed = $(shell $(PY) -I -c "import importlib.util as u, sys; \
  sys.exit(any(u.find_spec(m) is None for m in '$(1)'.split()))" 2>/dev/null && echo yes)
ifneq ($(call installed,fuser torch),yes)
$(shell rm -f $(DEMO_STAMP) $(TEST_STAMP))
else ifneq ($(call installed,tvm ray pytest xdist ruff),yes)
$(shell rm -f $(TEST_STAMP))
endif

# The demo needs torch (pinned first: an unpinned torch pulls GBs of CUDA wheels), fuser and Graphviz.
$(DEMO_STAMP): pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(call system,dot,$(DEMO_PACKAGES))
	@touch $@

# The tests also need the test tools, Apache TVM, Ray (fuser sweep), Chromium and valgrind.
$(TEST_STAMP): pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,tvm,ray]'
	$(call system,dot chromium valgrind,$(TEST_PACKAGES))
	@touch $@

install: $(DEMO_STAMP)
install-test: $(TEST_STAMP)

# what fuser buys on zoo ResNet-18: the file as exported -> optimized, pruned 30%, fused at 256KB
demo: $(DEMO_STAMP)
	@mkdir -p $(OUT)
	$(PY) -m fuser zoo export resnet18 $(OUT)/resnet18.onnx
	$(PY) -m fuser optimize $(OUT)/resnet18.onnx $(OUT)/resnet18.opt.onnx
	$(PY) -m fuser report $(OUT)/resnet18.onnx -o $(OUT)/report.html --prune 0.3 --measure

# lint: style (ruff) and the layer contract (import-linter, [tool.importlinter] in pyproject.toml)
lint: $(TEST_STAMP)
	ruff check .
	ruff format --check .
	lint-imports

# one pytest worker per core, at most 4 (each holds its own zoo captures and TVM builds); a
# file's tests stay on one worker, so module fixtures (TVM builds, Ray, the RPC tracker) are made once
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(TEST_STAMP) lint
	$(PYTEST)

test-heavy: $(TEST_STAMP)
	FUSER_HEAVY=1 $(PYTEST)

clean:
	rm -rf $(OUT) $(DEMO_STAMP) $(TEST_STAMP) .pytest_cache
