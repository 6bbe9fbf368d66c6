# Two commands on a fresh machine:
#   make demo   install, then capture a zoo model, report it, optimize it
#   make test   install, then run the test suite
PY ?= python3
OUT ?= out
STAMP := .install.stamp

.PHONY: install demo lint test test-heavy clean

$(STAMP): pyproject.toml
	# torch first and pinned: an unpinned torch pulls GBs of CUDA wheels
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,tvm]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(OUT)
	$(PY) -m fuser zoo list
	$(PY) -m fuser zoo export resnet18 $(OUT)/resnet18.onnx
	$(PY) -m fuser info $(OUT)/resnet18.onnx
	$(PY) -m fuser optimize $(OUT)/resnet18.onnx $(OUT)/resnet18.opt.onnx
	$(PY) -m fuser info $(OUT)/resnet18.opt.onnx --json | head -n 40

# lint: style (ruff) and the layer contract (import-linter, [tool.importlinter] in pyproject.toml)
lint: $(STAMP)
	ruff check .
	ruff format --check .
	lint-imports

test: $(STAMP) lint
	$(PY) -m pytest -q

test-heavy: $(STAMP)
	FUSER_HEAVY=1 $(PY) -m pytest -q

clean:
	rm -rf $(OUT) $(STAMP) .pytest_cache
