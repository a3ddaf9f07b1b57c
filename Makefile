# joulebench: `make study` (install + run the quickstart or STUDY=...), `make test`, `make compose-up`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= studies/quickstart.yaml
# torch: 2.13.0 is the CPU build where a local wheel exists; on a CUDA machine pip takes the CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Compose: `docker compose` (v2) where the CLI has it, else docker-compose (v1). GPU=1 adds compose.gpu.yaml.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_FILES := -f compose.yaml $(if $(GPU),-f compose.gpu.yaml,)

.PHONY: study test install images report clean-results compose-build compose-up

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[transformers,test]"
	touch $@

install: $(VENV)/.installed

study: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/joulebench run $(STUDY)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

report: $(VENV)/.installed
	@test -n "$(DIR)" || (echo "usage: make report DIR=joulebench-results/<study>-<time>" && exit 2)
	$(VENV)/bin/joulebench report $(DIR)

# Engine images (docker/<engine>/Dockerfile) through the Docker SDK, tagged by a hash of their inputs:
# unchanged images are not rebuilt. ENGINE=transformers|vllm (default: all); BASE_IMAGE=... overrides the base.
images: $(VENV)/.installed
	$(VENV)/bin/joulebench images build $(ENGINE) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE),)

# compose.yaml mounts ${PWD}/studies and ${PWD}/joulebench-results at the same absolute paths (the engine makes
# bind mounts from host paths): run compose from this folder, whatever folder make was called from.
compose-build:
	cd $(CURDIR) && PWD=$(CURDIR) $(COMPOSE) $(COMPOSE_FILES) build

compose-up:
	mkdir -p $(CURDIR)/joulebench-results
	cd $(CURDIR) && PWD=$(CURDIR) STUDY=$(if $(filter-out $(STUDY),studies/quickstart.yaml),$(STUDY),) \
		$(COMPOSE) $(COMPOSE_FILES) up --build
