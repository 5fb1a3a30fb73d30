# artcap: one command to set up and caption (make demo), one to set up and test (make test).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-fast docs system-deps shipped-models clean

# The pinned torch pair first (pip takes it from local wheels where they exist), then artcap with
# its ranges (torch>=2.1, timm>=1.0), so nothing else is pulled.
$(BIN)/artcap: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[serve,ray,test]"
	touch $@

setup: $(BIN)/artcap

demo: setup
	$(BIN)/artcap caption examples/landscape.jpg

# The page test needs Debian's chromium + chromium-driver, the metadata tests exiftool (installed
# here when run as root; otherwise those tests skip and say why).
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v exiftool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver libimage-exiftool-perl; \
	  else echo "chromium/chromedriver/exiftool missing: the browser and metadata tests will skip"; fi; fi

test: setup system-deps
	$(BIN)/pytest -q -rs

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

# The documentation site (MkDocs Material) into build/site, the README as its home page; --strict fails on
# a broken link or anchor (scripts/mkdocs_hooks.py checks the links to files outside docs/).
docs: setup
	$(BIN)/pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d build/site

# Retrain every model shipped in src/artcap/models/ and its MODEL_CARD.md (about 1 h on 2 CPU cores).
shipped-models: setup
	$(BIN)/python scripts/make_shipped_model.py paper sat fast default

clean:
	rm -rf $(VENV) runs build *.egg-info
