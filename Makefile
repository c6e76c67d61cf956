# Two commands do all set-up on a fresh machine with only python3: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
AXE := build/node/node_modules/axe-core/axe.min.js
# `make run PORT=8001` when 8000 is taken; links in mail and QR codes follow it.
PORT ?= 8000
export VOUCHERS_DATABASE_URL ?= sqlite+aiosqlite:///var/vouchers.db

.PHONY: run test install db demo bench site messages clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

db: install
	$(BIN)/vouchers db upgrade
	$(BIN)/vouchers scheme load schemes/arnhem-2021.toml

run: export VOUCHERS_BASE_URL ?= http://127.0.0.1:$(PORT)
run: db
	@$(BIN)/vouchers serve --port $(PORT) --check
	@$(BIN)/vouchers demo
	@echo "Serving on $(VOUCHERS_BASE_URL)  (API: /api/v1, schema: /api/schema/openapi.json, mail: var/mail/)"
	@$(BIN)/vouchers serve --port $(PORT)

# axe-core (accessibility rules) for the browser tests, from the npm registry.
$(AXE):
	mkdir -p build/node
	npm install --silent --no-audit --no-fund --prefix build/node axe-core@4

test: install
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory $(AXE); fi
	$(BIN)/python -m pytest -W error $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

site: install
	$(BIN)/vouchers site build

# Lists every message without Dutch text, with the .po file of its part to add it to.
messages: install
	$(BIN)/python -m pytest -q tests/test_i18n.py

clean:
	rm -rf build var .pytest_cache
