# neuromfm: one-command set-up, tests and comparison. See README.md.
PY := .venv/bin/python

.PHONY: setup test compare clean-venv
setup:
	@bash scripts/setup.sh
	@bash scripts/setup-tools.sh

test: setup
	$(PY) -m pytest

compare: setup
	$(PY) -m benchmarks.compare ann snn

clean-venv:
	rm -rf .venv .venv-lava
