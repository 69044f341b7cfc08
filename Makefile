# kambda — the two commands a newcomer needs are `make run` and `make test`; both bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PORT   ?= 8080

.PHONY: run test test-deps lint bench proto proto-check venv clean k8s-binaries cluster-up cluster-down images images-local kind-up

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

## run: the whole platform locally (gateway, agents, runtimes) serving examples/ on http://127.0.0.1:$(PORT)
## Sandboxes run under bubblewrap (installed here when run as root; without it they run unisolated, with a warning).
run: venv
	@command -v bwrap >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null; }
	$(BIN)/kambda run examples --port $(PORT)

## test: unit, integration (real gateway, agents, awslambdaric runtimes, NATS) and control-plane tests (a real
## kube-apiserver + etcd + controller-manager, started and stopped by the tests). Installs what they need first.
test: venv test-deps
	@# The images' tarballs first (minutes on a new machine; cached by a digest of the sources): built inside a
	@# test they would count against its timeout. The e2e suite imports them once its cluster runs.
	bash hack/images-local.sh > /dev/null
	$(BIN)/pytest -q

## test-deps: Debian packages and the Kubernetes binaries the tests start (root; cached after the first time)
test-deps:
	@missing=""; for pc in curl:curl nats-server:nats-server etcd:etcd-server openssl:openssl npm:npm unzip:unzip bwrap:bubblewrap; do \
	  command -v $${pc%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pc%%:*} ] || missing="$$missing $${pc#*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	bash hack/build-k8s.sh
	bash hack/get-helm.sh >/dev/null
	bash hack/build-node-ric.sh >/dev/null

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check -q .
	$(BIN)/mypy
	@$(MAKE) --no-print-directory proto-check

## bench: latency/throughput against a bare aiohttp server measured in the same run, cold starts, and a 10-minute
## soak (leaks, lost or duplicated events, abusive traffic; SOAK_MINUTES to change its length)
SOAK_MINUTES ?= 10
bench: venv test-deps
	$(BIN)/python bench/invoke_bench.py
	$(BIN)/python bench/async_bench.py
	$(BIN)/python bench/control_bench.py
	$(BIN)/python bench/operator_bench.py
	$(BIN)/python bench/k8s_coldstart_bench.py
	$(BIN)/python bench/replicas_bench.py
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

## proto: regenerate runtime/rpc from runtime/proto/runtime.proto
proto: venv
	PATH=$(BIN):$$PATH sh runtime/proto/generate.sh

proto-check: venv
	@tmp=$$(mktemp -d) && cp runtime/rpc/runtime_pb2*.py* $$tmp/ && PATH=$(BIN):$$PATH sh runtime/proto/generate.sh && \
	  for f in runtime/rpc/runtime_pb2*.py*; do cmp -s $$f $$tmp/$$(basename $$f) || { echo "$$f is stale: run make proto"; exit 1; }; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

## cluster-up / cluster-down: a real Kubernetes (Debian's source, built once into /var/cache/k8s-test-cluster);
## WITH_NODE=0 for the control plane only. Prints the kubeconfig path.
K8S_BIN ?= /var/cache/k8s-test-cluster/bin
WITH_NODE ?= 1
k8s-binaries:
	bash hack/build-k8s.sh
	bash hack/get-helm.sh >/dev/null

cluster-up: k8s-binaries
	WITH_NODE=$(WITH_NODE) bash hack/test-cluster.sh up
	@bash hack/test-cluster.sh kubeconfig

cluster-down:
	bash hack/test-cluster.sh down

## images-local: the runtime image without Docker or a registry (debootstrap rootfs + this tree), imported into
## the test cluster's containerd; prints its name
images-local: venv
	bash hack/images-local.sh

## images: the gateway/operator and runtime images (needs Docker)
VERSION ?= 0.1.0
images:
	docker build -f images/kambda.Dockerfile -t localhost/kambda:$(VERSION) .
	docker build -f images/runtime.Dockerfile -t localhost/kambda-runtime:$(VERSION) .
	docker build -f images/runtime.Dockerfile --build-arg PYTHON=3.13 -t localhost/kambda-runtime-python3.13:$(VERSION) .

## kind-up: a kind cluster with kambda installed by Helm (needs Docker and kind)
kind-up: images
	kind get clusters | grep -qx kambda || kind create cluster --name kambda
	kind load docker-image --name kambda localhost/kambda:$(VERSION) localhost/kambda-runtime:$(VERSION)
	kubectl apply -f crds/
	helm upgrade --install kambda charts/kambda --namespace kambda-system --create-namespace \
	  --set functionsNamespace=default --set image.pullPolicy=Never --set runtimeImage.pullPolicy=Never --wait
	@echo "kubectl port-forward -n kambda-system svc/kambda-gateway 8080:8080, then invoke http://127.0.0.1:8080"
