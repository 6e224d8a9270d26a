# `make demo`, `make test`, `make bench`: each creates .venv and installs the package first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: demo test test-slow bench wheel-check clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# --no-compile: pip would byte-compile every module of every package (torch's thousands) up front, about
# half the install (115 s -> 50 s on a 2-core Xeon); Python compiles the few hundred a run imports on first
# use instead (~8 s, once). "Once" needs Python to keep what it compiled in .venv's __pycache__ folders,
# as pip would have: where PYTHONDONTWRITEBYTECODE is set, every process would compile torch again (~8 s
# each; the test suite starts dozens), so the commands below run without it.
unexport PYTHONDONTWRITEBYTECODE
PIP_INSTALL := $(BIN)/pip install -q --disable-pip-version-check --no-compile -c constraints.txt

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(PIP_INSTALL) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ddpm train --preset demo --out $(RUN_DIR) --resume

# The second pytest runs the tests that compare with stored numbers again with PyTorch dispatching as
# a CPU without AVX (other kernels, other float rounding), so a test that only passes on the
# developer's CPU fails here first.
PLAIN_CPU := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41

# pytest runs one worker per core (pytest-xdist), a test file to a worker, so that module-scoped
# fixtures (the README's demo run, the torchrun runs) are made once; each test process runs torch on
# one thread (tests/conftest.py).
test: $(VENV)/.installed
	$(BIN)/ruff check src tests train.py $(wildcard benchmarks/*.py)
	$(BIN)/pytest -q -n auto --dist loadfile
	$(PLAIN_CPU) $(BIN)/pytest -q -m "stored_reference and not slow and not gpu" -p no:cacheprovider

test-slow: $(VENV)/.installed
	$(BIN)/pytest -q -m slow

# The CPU benchmark suite (~25 min, run it alone on the machine): tables land in docs/bench_*_cpu.md.
bench: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_unet.py --out docs/bench_unet_cpu.md
	$(BIN)/python benchmarks/bench_unet.py --sizes wide --same-optimizer --out docs/bench_unet_same_optimizer_cpu.md
	$(BIN)/python benchmarks/bench_unet.py --sizes wide --same-optimizer --profile --out docs/bench_unet_profile_cpu.md
	$(BIN)/python benchmarks/bench_loop.py --out docs/bench_loop_cpu.md 2>/dev/null
	$(BIN)/python benchmarks/bench_loop.py --preset wide --steps 150 --out docs/bench_loop_wide_cpu.md 2>/dev/null
	$(BIN)/python benchmarks/bench_sampling.py > docs/bench_sampling_cpu.md
	$(BIN)/python benchmarks/bench_attention.py > docs/bench_attention_cpu.md
	$(BIN)/python benchmarks/bench_levers.py --optimizer --size seed > docs/bench_optimizer_cpu.md
	$(BIN)/python benchmarks/bench_levers.py --size cpu --out docs/bench_levers_cpu.md

# A non-editable install, used from outside the source tree (~1-2 min: a new venv): build the wheel,
# install it into a fresh venv, and run the core commands in an empty folder with an empty cache.
wheel-check: $(VENV)/.installed
	rm -rf /tmp/ddpm-wheel && mkdir -p /tmp/ddpm-wheel/run
	$(BIN)/pip wheel -q --no-deps -w /tmp/ddpm-wheel .
	$(PYTHON) -m venv /tmp/ddpm-wheel/venv
	/tmp/ddpm-wheel/venv/bin/pip install -q --disable-pip-version-check -c constraints.txt /tmp/ddpm-wheel/ddpm-*.whl
	cd /tmp/ddpm-wheel/run && export DDPM_CACHE=/tmp/ddpm-wheel/cache && \
	  /tmp/ddpm-wheel/venv/bin/ddpm train --preset demo --out runs/demo --max-steps 3 --num-sample-images 4 && \
	  /tmp/ddpm-wheel/venv/bin/ddpm sample --run runs/demo --num-images 8 --sampler dpmpp-2m --npz s.npz --out g.png && \
	  /tmp/ddpm-wheel/venv/bin/ddpm eval s.npz && /tmp/ddpm-wheel/venv/bin/ddpm noise --out fwd.png && \
	  /tmp/ddpm-wheel/venv/bin/ddpm export --run runs/demo --out m.safetensors && \
	  /tmp/ddpm-wheel/venv/bin/ddpm train --preset demo --embedding-placement after_conv1 --out runs/official \
	    --max-steps 2 --num-sample-images 0 && \
	  /tmp/ddpm-wheel/venv/bin/ddpm export --run runs/official --format diffusers --out official-diffusers && \
	  /tmp/ddpm-wheel/venv/bin/ddpm sample --checkpoint official-diffusers --num-images 4 --out d.png && \
	  /tmp/ddpm-wheel/venv/bin/ddpm convert official-diffusers --out official.safetensors

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
