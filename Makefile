# kambda — the two commands a newcomer needs are `make run` and `make test`; both bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PORT   ?= 8080

.PHONY: run test lint bench proto proto-check venv clean cluster-up cluster-down images kind-up

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

## run: the whole platform locally (gateway, agents, runtimes) serving examples/ on http://127.0.0.1:$(PORT)
run: venv
	$(BIN)/kambda run examples --port $(PORT)

## test: unit and integration tests (real gateway, agents and awslambdaric runtimes)
test: venv
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check -q .
	$(BIN)/mypy
	@$(MAKE) --no-print-directory proto-check

## bench: latency/throughput against a bare aiohttp server measured in the same run, and cold starts
bench: venv
	$(BIN)/python bench/invoke_bench.py
	$(BIN)/python bench/async_bench.py

## proto: regenerate runtime/rpc from runtime/proto/runtime.proto
proto: venv
	PATH=$(BIN):$$PATH sh runtime/proto/generate.sh

proto-check: venv
	@tmp=$$(mktemp -d) && cp runtime/rpc/runtime_pb2*.py* $$tmp/ && PATH=$(BIN):$$PATH sh runtime/proto/generate.sh && \
	  for f in runtime/rpc/runtime_pb2*.py*; do cmp -s $$f $$tmp/$$(basename $$f) || { echo "$$f is stale: run make proto"; exit 1; }; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
