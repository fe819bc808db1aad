PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian's wallpapers, among the scenes scripts/train_small.py trains on (docs/small_model.md).
WALLPAPER_PACKAGES := gnome-backgrounds mate-backgrounds plasma-workspace-wallpapers
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: venv test test-slow lint demo wallpapers clean

venv: $(STAMP)

$(STAMP): requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-test.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check .

wallpapers: venv
	$(SUDO) apt-get update
	$(SUDO) apt-get install --yes --no-install-recommends $(WALLPAPER_PACKAGES)
	$(BIN)/python -c "from ldm.data.synthetic.scenes import installed_wallpapers; print(len(installed_wallpapers()), 'wallpapers found')"

demo: venv
	$(BIN)/python demo_script.py demo_data

clean:
	rm -rf $(VENV) output.png
