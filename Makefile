# whittle — the two commands for a fresh machine:
#   make demo    fetch Gemma 3 270M and Wikipedia text, compile to the throughput tier,
#                evaluate before and after, print the table
#   make test    everything CI runs (unit, fixture, CLI and compile tests; transformers
#                conformance of compiled checkpoints; real-model parity on Gemma 3 270M;
#                llama.cpp conformance (convert_hf_to_gguf + llama-server, same greedy tokens); the
#                GPU tests through the CPU emulator, `make test-emu`, and the device check's
#                parity and benchmark steps on it)
# Both install what they need into the repo (.cuda for nvcc, .venv for Python).

CARGO ?= cargo
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: demo test test-emu lint build nvcc python python-torch fixtures bench-cpu bench-cpu-bf16 quality tasks-data clean

nvcc:
	bash scripts/install-nvcc.sh

python:
	bash scripts/setup-python.sh

python-torch:
	bash scripts/setup-python.sh --with-torch

build: nvcc
	$(CARGO) build --release

test: nvcc python-torch
	$(CARGO) test --release
	$(PY) scripts/conformance.py target/tmp/conformance
	bash scripts/real-model-check.sh
	bash scripts/llamacpp-check.sh
	$(MAKE) test-emu
	bash tests/emu/parity.sh $(PY)
	bash tests/emu/bench.sh $(PY)

lint: nvcc
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

demo: build python
	bash scripts/demo.sh

# Regenerate the committed fixtures with transformers (see tests/fixtures/README.md).
fixtures: python-torch
	$(PY) scripts/make_fixtures.py tests/fixtures
	$(PY) scripts/make_mm_fixture.py tests/fixtures
	$(PY) scripts/make_chat_fixture.py tests/fixtures/chat
	$(PY) scripts/hf_tasks.py tests/fixtures/tiny-gemma3 --tasks arc_easy,arc_challenge,hellaswag,piqa,lambada \
	  --tasks-dir tests/fixtures/tasks --items-out tests/fixtures/tasks/reference-tiny-gemma3.jsonl \
	  --metrics-out tests/fixtures/tasks/reference-tiny-gemma3.json --threads 1

# CPU forward throughput, whittle vs transformers fp32, on Gemma 3 270M (README table).
bench-cpu: build python-torch
	bash scripts/bench-cpu-forward.sh

# f32 vs bf16 CPU GEMMs: forward against transformers, compile time and KL (README, CPU bf16 GEMM).
bench-cpu-bf16: build python-torch
	bash scripts/bench-cpu-bf16.sh

# Zero-shot task data (evaluation only) and es/fr Wikipedia text for `whittle eval --tasks/--text`.
tasks-data: python
	$(PY) scripts/get-tasks.py data/tasks
	$(PY) scripts/get-wiki-text.py data en es fr

# Compile-quality table on Gemma 3 270M (README table); needs ../shared/data.
quality: build python
	bash scripts/bench-quality.sh

clean:
	$(CARGO) clean

# The GPU tests without a GPU: kernels/*.cu compiled as C++ behind a fake libcuda.so with
# AddressSanitizer (tests/emu, tests/emu/build.sh), so launchers, grids, kernel index
# arithmetic and buffer bounds are checked against the CPU oracle on any machine. Real-model
# checks are left to the device machine.
EMU_TESTS := --test cuda_kernels --test cuda_linalg --test cuda_model --test cuda_backend --test cuda_decode
test-emu: nvcc
	EMU_ASAN=1 bash tests/emu/build.sh
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$(CURDIR)/tests/emu/run.sh \
	  $(CARGO) test --release $(EMU_TESTS) -- --ignored
	# The model on a pre-Hopper GPU (sm_80: mma.sync GEMM and Gram everywhere, no wgmma).
	WHITTLE_EMU_SM=80 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$(CURDIR)/tests/emu/run.sh \
	  $(CARGO) test --release --test cuda_model -- --ignored
	# The --device CLI tests with a (emulated) GPU present: auto picks it, reports name it.
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$(CURDIR)/tests/emu/run.sh \
	  $(CARGO) test --release --test device
	# The kernel tests again with every block's threads scheduled last-first (missing barriers),
	# and once in a shuffled order (dependencies neither fixed order exposes).
	WHITTLE_EMU_ORDER=reverse CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$(CURDIR)/tests/emu/run.sh \
	  $(CARGO) test --release --test cuda_kernels --test cuda_linalg -- --ignored
	WHITTLE_EMU_ORDER=random:1 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$(CURDIR)/tests/emu/run.sh \
	  $(CARGO) test --release --test cuda_kernels -- --ignored
