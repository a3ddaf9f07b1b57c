# joulebench: `make study` (install + run the quickstart or STUDY=...), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= studies/quickstart.yaml
# torch: 2.13.0 is the CPU build where a local wheel exists; on a CUDA machine pip takes the CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: study test install images report clean-results

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
