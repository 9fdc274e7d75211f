# fileserver: one command to set up and run, one to set up and test.
# As root on Debian 12: `make run` serves www/ on http://127.0.0.1:8080/, `make test` runs every test.

VENV    := .venv
PY      := $(VENV)/bin/python
PORT    ?= 8080
IFACE   ?= lo
PREFIX  ?= /usr/local
PYTEST_ARGS ?=

.PHONY: setup run test bench fuzz soak install uninstall clean

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/fileserver --root www --port $(PORT) --interface $(IFACE)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

install: setup
	install -d $(PREFIX)/bin
	printf '#!/bin/sh\nexec %s/%s/bin/fileserver "$$@"\n' "$(CURDIR)" "$(VENV)" > $(PREFIX)/bin/fileserver
	chmod 755 $(PREFIX)/bin/fileserver
	sed -e 's|@ROOT@|$(CURDIR)/www|g' -e 's|@BIN@|$(PREFIX)/bin/fileserver|g' -e 's|@REPO@|$(CURDIR)|g' \
		systemd/fileserver.service \
		> /etc/systemd/system/fileserver.service
	[ -e /etc/fileserver.toml ] || sed -e 's|@ROOT@|$(CURDIR)/www|g' systemd/fileserver.toml > /etc/fileserver.toml
	chmod 644 /etc/fileserver.toml
	systemctl daemon-reload 2>/dev/null || true
	@echo "installed $(PREFIX)/bin/fileserver, /etc/systemd/system/fileserver.service and /etc/fileserver.toml"
	@echo "start it with: systemctl enable --now fileserver"

uninstall:
	rm -f $(PREFIX)/bin/fileserver /etc/systemd/system/fileserver.service
	systemctl daemon-reload 2>/dev/null || true

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

bench: setup
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) bench/run.py $(if $(QUICK),--quick,)

# A bounded soak over a client-router-server topology with seeded loss, kernel path against
# userspace alone, printing a summary (bench/soak.py; SOAK_SECONDS, SOAK_LOSS, SOAK_SEED).
soak: setup
	$(PY) bench/soak.py

# The parser's differential fuzz run, longer than the one in `make test` (FUZZ_CASES, FUZZ_SEED). The
# test sets its own timeout from FUZZ_CASES and ends with how many cases ran and the kernel answered.
fuzz: setup
	FUZZ_CASES=$${FUZZ_CASES:-20000} $(PY) -m pytest -q tests/kernel/test_parser_differential.py
