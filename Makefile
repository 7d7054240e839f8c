# The two commands of the README, and the quick loop.
.PHONY: demo test test-fast fuzz lint bench

demo:        ## set up and run the service + the tutorial's chat app
	scripts/demo.sh

test:        ## set up and run every check and the whole test suite
	scripts/test.sh

test-fast:   ## the quick loop: skip the slow end-to-end tests
	scripts/test.sh -m "not e2e"

fuzz:        ## the property tests' long profile (>= 100,000 inputs; docs/testing.md)
	scripts/fuzz.sh

lint:
	.venv/bin/ruff check src tests bench examples && .venv/bin/ruff format --check src tests bench examples && .venv/bin/mypy

bench:
	.venv/bin/python bench/broadcast.py
