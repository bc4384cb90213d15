# The two commands of the README:
#   make dev-up   set up everything, start the local stack, run the operator on a sample
#   make test     set up everything, then lint, type-check, check the CRDs and run all tests
.PHONY: bootstrap dev-up dev-down test lint unit bench crds kind-up image kind-load deploy e2e

VENV := .venv/bin
KIND_CLUSTER ?= agentqueue
IMAGE ?= agentqueue-operator:dev

bootstrap:
	./scripts/bootstrap.sh

dev-up: bootstrap
	$(VENV)/agentqueue dev up

dev-down:
	$(VENV)/agentqueue dev down

lint:
	$(VENV)/ruff check operator tests bench
	$(VENV)/mypy
	$(VENV)/agentqueue crds --check

test: bootstrap lint
	$(VENV)/python -m pytest -q -p no:cacheprovider --timeout=600

unit: bootstrap
	$(VENV)/python -m pytest -q -m "not k8s and not slow"

bench: bootstrap
	$(VENV)/python -m bench.run

crds:
	$(VENV)/agentqueue crds

# --- kind, for users with Docker (not used by our own suite) -------------------------
kind-up:
	kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml

image:
	docker build -t $(IMAGE) .

kind-load:
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)

deploy:
	helm upgrade --install agentqueue charts/agentqueue-operator -n agentqueue-system \
	  --create-namespace --set image.repository=$(firstword $(subst :, ,$(IMAGE))) \
	  --set image.tag=$(lastword $(subst :, ,$(IMAGE))) --set image.pullPolicy=Never

e2e:
	kubectl apply -f examples/quickstart.yaml
	kubectl wait --for=condition=Ready agentqueues --all --timeout=120s
