# Two commands a new machine needs: `make demo` and `make test`. Both set up on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench-secagg bench-dp bench-accuracy bench-accuracy-full bench-scale bench-peers clean

$(STAMP): pyproject.toml
	@# The PDF privacy report (WeasyPrint) needs Pango from the system; install it if missing.
	ldconfig -p | grep -q libpangoft2-1.0.so.0 || { apt-get update -q && \
	  apt-get install -y -q libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0; }
	@# The multi-host test (tests/store/test_multihost.py) makes network namespaces with `ip`.
	command -v ip >/dev/null || [ -x /usr/sbin/ip ] || { apt-get update -q && \
	  apt-get install -y -q iproute2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The four-hospital federation, once per method, DP at epsilon 3 and secure aggregation on,
# then the privacy report of the FedReMa run (HTML copy in runs/demo/privacy-report.html).
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/fedrema simulate heart-disease --method local,fedavg,fedrema --rounds 20 --seed 1 \
	  --epsilon 3 --workdir runs/demo
	$(BIN)/fedrema privacy report --workspace runs/demo/fedrema/workspace \
	  --html runs/demo/privacy-report.html

# A test file per worker, in collection order: the conftest puts the `slow` tests (whole
# federations through the real CLI, a minute or more each) first, so none is left to run
# alone at the end. (xdist's default reorder, by number of tests per file, started the
# longest single-test files last.)
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check .

bench-secagg: $(STAMP)
	$(BIN)/python benchmarks/secagg.py

bench-dp: $(STAMP)
	$(BIN)/python benchmarks/dp.py

# Secure aggregation for n = 4..100 sites and d = 1e4..1e7 parameters (about 10 min on 2
# cores); tables in benchmarks/results/scale/, plot in docs/img/scale.png. ARGS=--quick.
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py $(ARGS)

# Ours next to Flower's SecAgg+ in the same run, in a separate environment: flwr 1.40.0 is
# the newest release whose dependencies install here, and the project's crypto/ needs only
# numpy and cryptography (loaded from this checkout). ARGS=--quick.
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed-stamp

$(PEERS_STAMP):
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q 'flwr==1.40.0' 'numpy>=1.26,<3' 'cryptography>=50,<52'
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PEERS)/bin/python benchmarks/vs_flower.py $(ARGS)

# Every method vs every other on heart disease and label skew: 12 methods x 4 privacy levels x
# 2 seeds, with the hyperparameters the last selection chose (benchmarks/chosen.json; about 16 min
# on 2 cores); tables and plots in benchmarks/results/accuracy/ (docs/benchmarks.md for more).
bench-accuracy: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py --seeds 2 --datasets heart-disease,label-skew $(ARGS)

# The same with 3 seeds, choosing every hyperparameter again on validation splits first.
bench-accuracy-full: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py --select --seeds 3 $(ARGS)

clean:
	rm -rf $(VENV) $(PEERS) runs
