# Two commands on a fresh machine:
#   make demo   install, then export a zoo model, optimize it and write out/report.html
#   make test   install, then run the test suite (screenshots of the report page: out/test-artifacts/)
PY ?= python3
OUT ?= out
STAMP := .install.stamp

# Debian packages: Graphviz draws the report's graph, Chromium renders the page in the tests.
SYSTEM_PACKAGES := graphviz chromium fonts-dejavu-core

.PHONY: install system demo lint test test-heavy clean

$(STAMP): pyproject.toml
	# torch first and pinned: an unpinned torch pulls GBs of CUDA wheels
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,tvm]'
	@touch $(STAMP)

# apt-get only when `dot` or `chromium` is missing (as root; elsewhere it says what to install)
system:
	@command -v dot >/dev/null && command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); }; \
	  else echo "fuser report needs Graphviz and its tests Chromium: install $(SYSTEM_PACKAGES)"; exit 1; fi; }

install: $(STAMP) system

# what fuser buys on zoo ResNet-18: the file as exported -> optimized, pruned 30%, fused at 256KB
demo: install
	@mkdir -p $(OUT)
	$(PY) -m fuser zoo export resnet18 $(OUT)/resnet18.onnx
	$(PY) -m fuser optimize $(OUT)/resnet18.onnx $(OUT)/resnet18.opt.onnx
	$(PY) -m fuser report $(OUT)/resnet18.onnx -o $(OUT)/report.html --prune 0.3 --measure

# lint: style (ruff) and the layer contract (import-linter, [tool.importlinter] in pyproject.toml)
lint: install
	ruff check .
	ruff format --check .
	lint-imports

test: install lint
	$(PY) -m pytest -q

test-heavy: install
	FUSER_HEAVY=1 $(PY) -m pytest -q

clean:
	rm -rf $(OUT) $(STAMP) .pytest_cache
