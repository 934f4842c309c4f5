# funcscale — the entry points people type.
CARGO ?= cargo
CRDS  := crds/funcscale-crds.yaml

.PHONY: all build test crds crds-check lint fmt ci demo demo-plan e2e e2e-cluster bench redis chart-check install-bundle docs image control-plane control-plane-down celery-test celery-bench celery-test-venv

all: build

build:
	$(CARGO) build --workspace --bins

## test: every test (unit, property, CRD schema, real Redis at 127.0.0.1:6379, and the e2e
##   scenarios on the real control plane, which spawn the operator and worker binaries: built first),
##   then funcscale-celery's (make celery-test)
test: redis control-plane
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --doc
	$(CARGO) nextest run --workspace --no-fail-fast
	$(MAKE) celery-test

## celery-test: the Celery integration's tests (funcscale-celery/tests: real Celery workers and
##   beats as subprocesses on the real Redis at 127.0.0.1:6379, what they wrote read back by the
##   Rust protocol crate), in a virtualenv ($(CELERY_TEST_VENV)) with the package installed from
##   the repository path
CELERY_TEST_VENV ?= $(CURDIR)/target/celery-test-venv
celery-test: redis celery-test-venv
	cd funcscale-celery && CARGO=$(CARGO) $(CELERY_TEST_VENV)/bin/python -m pytest -q

celery-test-venv:
	@test -x $(CELERY_TEST_VENV)/bin/python || python3 -m venv $(CELERY_TEST_VENV)
	@$(CELERY_TEST_VENV)/bin/pip install -q --disable-pip-version-check 'celery[redis]>=5.3,<6' 'pytest>=7'
	@$(CELERY_TEST_VENV)/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps ./funcscale-celery

## celery-bench: the Celery integration's cost: no-op task throughput of a real Celery worker
##   with and without funcscale_celery.install(app), in the same run (5 rounds, medians)
celery-bench: redis celery-test-venv
	cd funcscale-celery && $(CELERY_TEST_VENV)/bin/python bench/bench.py

## crds: regenerate crds/ from the Rust types
crds:
	$(CARGO) run -q -p funcscale-operator -- crd > $(CRDS)
	charts/ci-check.sh render

## crds-check: fail when crds/ differs from what the types generate
crds-check:
	@$(CARGO) run -q -p funcscale-operator -- crd > target/crds.check.yaml
	@diff -u $(CRDS) target/crds.check.yaml || { echo "crds/ is stale: run 'make crds' and commit"; exit 1; }
	@echo "crds/ is fresh"

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## redis: make sure a Redis answers on 127.0.0.1:6379 (starts a local one if not)
redis:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null; \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
	    --dir /var/lib/redis --logfile /var/log/redis/ci.log; \
	  for i in $$(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null

## control-plane: a real Kubernetes control plane as local processes (etcd, kube-apiserver,
##   kube-controller-manager, kube-scheduler; e2e/control-plane/). Finds the binaries
##   (KUBEBUILDER_ASSETS, PATH, ~/.cache/funcscale) or builds them once from Debian's source
##   package (~5 min on 2 cores); reuses a running one. KUBECONFIG=/tmp/funcscale-control-plane/admin.kubeconfig
control-plane:
	@e2e/control-plane/control-plane.sh up >/dev/null

control-plane-down:
	e2e/control-plane/control-plane.sh down

## ci: what .ci/run checks
ci: lint crds-check chart-check test

## demo: the closed loop live — the real control plane (found or built once; else the in-memory
##   API server, said so), the process kubelet, the operator, a queue, an autoscaled pool and a
##   producer sending waves; one line a second (depth, replicas, why).
##   Ends after ~2 minutes (DEMO_SECONDS) or on Ctrl-C; cleans up its processes and Redis keys.
DEMO_SECONDS ?= 120
demo: redis
	$(CARGO) build -q --workspace --bins
	$(CARGO) run -q -p funcscale-e2e --bin funcscale-demo -- --seconds $(DEMO_SECONDS)

## demo-plan: the capacity planner on the seed stack's numbers, and the policy against KEDA/HPA
demo-plan: build
	$(CARGO) run -q -p funcscale-operator -- capacity --monitors 10000 --task-ms 500
	$(CARGO) run -q -p funcscale-operator -- capacity --table
	$(CARGO) run -q -p funcscale-sim --

## e2e: the closed-loop scenarios (burst, beat, Redis outage, operator restart/takeover,
##   invalid resources, cron load), the chart and every example applied and brought to Ready,
##   and the process kubelet's own tests, on the real control plane (make control-plane)
e2e: redis control-plane
	$(CARGO) build --workspace --bins
	$(CARGO) nextest run -p funcscale-e2e --no-fail-fast --test scenarios --test node --test manifests

## e2e-cluster: the same scenarios against the cluster KUBECONFIG points at (simulated kubelet
##   off; the operator runs locally against it; worker pods use FUNCSCALE_E2E_WORKER_IMAGE and
##   must reach FUNCSCALE_E2E_REDIS_URL, as must this machine)
e2e-cluster: build
	@test -n "$$KUBECONFIG" || { echo "e2e-cluster: set KUBECONFIG to a cluster"; exit 1; }
	@test -n "$$FUNCSCALE_E2E_REDIS_URL" || { echo "e2e-cluster: set FUNCSCALE_E2E_REDIS_URL (reachable from pods and from here)"; exit 1; }
	FUNCSCALE_E2E_CLUSTER=1 $(CARGO) nextest run -p funcscale-e2e --no-fail-fast --test scenarios

## bench: worker throughput (vs Celery, redis-benchmark), the Celery integration's cost
##   (make celery-bench), the operator's poll benchmark, task
##   records (cost: throughput on/off; query latency over 100,000 records), the
##   policy simulator (funcscale vs the work bound, a tuned KEDA, KEDA defaults, HPA on CPU), the running operator at scale
##   (CPU and memory of the release binary with 1,000 pools and 10,000 queues: SCALE_POOLS), and
##   the reaction latency (tasks pushed -> Deployment replicas changed, p50/p95) next to KEDA's
##   defaults, and worker throughput on a 3-master Redis Cluster vs one redis-server
bench: redis control-plane
	$(CARGO) build --release --workspace --bins
	e2e/bench/worker_bench.sh
	$(MAKE) celery-bench
	$(CARGO) nextest run -p funcscale-operator --cargo-profile release --test bench --run-ignored only --no-capture
	$(CARGO) nextest run -p funcscale-worker --cargo-profile release --test bench_records --run-ignored only --no-capture
	$(CARGO) run -q --release -p funcscale-sim --
	FUNCSCALE_SCALE_POOLS=$${SCALE_POOLS:-1000} $(CARGO) nextest run -p funcscale-e2e \
	    --cargo-profile release --test scale_bench --run-ignored only --no-capture
	$(CARGO) nextest run -p funcscale-e2e --cargo-profile release --test cluster_worker \
	    --run-ignored only --no-capture bench_worker_throughput
	$(CARGO) build --workspace --bins
	FUNCSCALE_E2E_LATENCY_TRIALS=$${TRIALS:-10} $(CARGO) nextest run -p funcscale-e2e --test scenarios \
	    --run-ignored only --no-capture reaction_latency

VERSION     ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_REPO  ?= ghcr.io/funcscale
DOCKER      ?= docker

## chart-check: helm lint, helm template | kubernetes-validate (1.30 + newest), values.schema.json
##   rejections, freshness of manifests/install.yaml, chart CRDs and docs/crd-reference.md, examples
chart-check:
	charts/ci-check.sh

## install-bundle: regenerate charts/funcscale/crds/, manifests/install.yaml and docs/crd-reference.md
##   (run after `make crds` or any chart change, then commit)
install-bundle:
	charts/ci-check.sh render

## docs: regenerate docs/crd-reference.md from crds/funcscale-crds.yaml (and the bundle with it)
docs:
	charts/ci-check.sh render

## image: build the operator and worker images (needs a Docker engine with BuildKit)
image:
	@command -v $(DOCKER) >/dev/null 2>&1 || { \
	  echo "image: '$(DOCKER)' is not installed. Install Docker (with BuildKit) or run"; \
	  echo "       'make image DOCKER=podman'. The Dockerfiles are operator/Dockerfile and worker/Dockerfile,"; \
	  echo "       built from the repository root."; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { \
	  echo "image: no container engine answers ('$(DOCKER) info' failed): this machine has the docker CLI"; \
	  echo "       but no running daemon. Build on a machine with Docker, or in CI, with:"; \
	  echo "         $(DOCKER) build -f operator/Dockerfile -t $(IMAGE_REPO)/funcscale-operator:$(VERSION) ."; \
	  echo "         $(DOCKER) build -f worker/Dockerfile   -t $(IMAGE_REPO)/funcscale-worker:$(VERSION) ."; \
	  exit 1; }
	DOCKER_BUILDKIT=1 $(DOCKER) build -f operator/Dockerfile -t $(IMAGE_REPO)/funcscale-operator:$(VERSION) .
	DOCKER_BUILDKIT=1 $(DOCKER) build -f worker/Dockerfile -t $(IMAGE_REPO)/funcscale-worker:$(VERSION) .
	@echo "built $(IMAGE_REPO)/funcscale-operator:$(VERSION) and $(IMAGE_REPO)/funcscale-worker:$(VERSION)"
