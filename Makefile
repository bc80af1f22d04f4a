# One entry point for people and CI. Every target does its own set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help deps venv test test-fast test-packaging fuzz demo bench soak profile replay-demo lab-down clean compiled test-compiled bench-compiled profile-compiled

help:
	@echo "make test       install what is missing, then run the whole test suite (lab tests need root)"
	@echo "make test-fast  the pure tests only (no namespaces, no root)"
	@echo "make test-packaging  build the wheel, install it in a fresh venv from PyPI, check the commands and the extras"
	@echo "make fuzz       the message decoders' fuzzers with 10^6 inputs each (hours; FUZZ_ROUNDS=1 for a tenth)"
	@echo "make demo       the main job: a live copy in the four-host lab (nginx, h2load, intercept, tcpcopy), ending in a report"
	@echo "make bench      the benchmark suite: the C TCPCopy and this copy side by side (HTTP, Redis, uploads), 3 runs each, judged on ratios to C and losses (about 20 min)"
	@echo "make soak       a 10-minute copy with each process's RSS sampled (no growth is the target)"
	@echo "make profile    where the copier's CPU goes under a load: py-spy flame graphs and text profiles in bench/profile/ (PROFILE_ARGS)"
	@echo "make replay-demo  a recorded HTTP session replayed through the engine alone to nginx"
	@echo "make lab-down   remove every lab namespace and process a crashed run left behind"
	@echo "make deps       install the Debian packages (deploy/install-deps.sh lists them)"
	@echo "make venv       create $(VENV) and install the project (editable) with every extra and the test tools"
	@echo "make compiled   create $(COMPILED) with the hot path (codec, engine, table) compiled by mypyc"
	@echo "make test-compiled  the codec, session and intercept tests against that compiled build"
	@echo "make bench-compiled  make bench with the compiled build (BENCH_ARGS, e.g. --only short-2500,keepalive-10000 --repeat 2)"
	@echo "make profile-compiled  make profile with the compiled build, C frames included (--native)"

deps:
	@./deploy/install-deps.sh

$(STAMP): pyproject.toml
	$(MAKE) deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,report,metrics,cluster]'
	touch $(STAMP)

venv: $(STAMP)

# The packaging test needs PyPI and a few minutes: it runs in test-packaging (and in CI).
test: deps venv
	$(BIN)/pytest -m "not packaging"

test-fast: venv
	$(BIN)/pytest -m "not lab and not packaging"

test-packaging: venv
	$(BIN)/pytest -m packaging

# The same fuzzers run in `make test` with a few thousand inputs in all. Here each gets
# FUZZ_ROUNDS x FUZZ_EXAMPLES inputs (10^6), in rounds of their own seed, which keeps the
# fuzzer's own bookkeeping (it grows with the inputs of a run) to a few hundred MB.
FUZZ_ROUNDS   ?= 10
FUZZ_EXAMPLES ?= 100000

fuzz: venv
	@for round in $$(seq 1 $(FUZZ_ROUNDS)); do \
		echo "fuzz round $$round of $(FUZZ_ROUNDS): $(FUZZ_EXAMPLES) inputs per fuzzer"; \
		TCPCOPY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider \
			--hypothesis-seed=$$round tests/cluster/test_wire_fuzz.py || exit 1; \
	done

demo: deps venv
	$(BIN)/python -m tcpcopy.lab.demo

bench: deps venv
	$(BIN)/python -m tcpcopy.lab.benchmark $(BENCH_ARGS)

soak: deps venv
	$(BIN)/python -m tcpcopy.lab.benchmark --soak 600 --json bench/soak.json

profile: deps venv
	$(BIN)/pip install -q py-spy
	$(BIN)/python -m tcpcopy.lab.profile $(PROFILE_ARGS)

# The hot path compiled with mypyc (setup.py), in a venv of its own and as a regular
# install: compiled modules beside the sources would hide later edits of the .py files.
# Needs a C compiler; pip brings mypy into the build environment.
COMPILED := .venv-mypyc

compiled:
	$(PYTHON) -m venv $(COMPILED)
	$(COMPILED)/bin/pip install -q --upgrade pip
	TCPCOPY_MYPYC=1 $(COMPILED)/bin/pip install -q '.[test]'

# The lab lives in the checkout only (an editable install maps it); the compiled venv is a
# regular install, so the lab is put on its path as tcpcopy.lab through a link.
LABPATH := build/labpath

$(LABPATH)/tcpcopy/lab:
	mkdir -p $(LABPATH)/tcpcopy
	ln -sfn $(CURDIR)/lab $(LABPATH)/tcpcopy/lab

bench-compiled: deps compiled $(LABPATH)/tcpcopy/lab
	PYTHONPATH=$(CURDIR)/$(LABPATH) $(COMPILED)/bin/python -m tcpcopy.lab.benchmark $(BENCH_ARGS)

profile-compiled: deps compiled venv $(LABPATH)/tcpcopy/lab
	$(BIN)/pip install -q py-spy
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHONPATH=$(CURDIR)/$(LABPATH) $(COMPILED)/bin/python -m tcpcopy.lab.profile --native $(PROFILE_ARGS)

test-compiled: compiled $(LABPATH)/tcpcopy/lab
	PYTHONPATH=$(CURDIR)/$(LABPATH) $(COMPILED)/bin/pytest -q -p no:cacheprovider -m "not lab" tests/capture tests/session tests/intercept

replay-demo: deps venv
	$(BIN)/python -m tcpcopy.lab.replay_demo

lab-down: venv
	$(BIN)/python -m tcpcopy.lab.netns down

clean:
	rm -rf $(VENV) $(COMPILED) .pytest_cache .hypothesis
