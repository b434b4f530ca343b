#!/usr/bin/env bash
# emkit's real path on a CUDA machine, as one script that fits a 10-minute device call:
# the peft (QLoRA) and unsloth trainers through `emkit run` on a model of Llama-3.2-1B's real
# config with random weights, hf generation, the local judge and the report, then
# bench/bench_gpu.py (tokens/s, MFU, 4-bit against 16-bit, two units sharing the GPU, the seed
# grid's projected training) and bench/bench_generate.py. docs/performance.md records what it printed.
#
#   scripts/gpu_check.sh pack            # here, once: .gpu/site.tgz and .gpu/cache (35 MB)
#   scripts/gpu_check.sh [STEP...]       # there; the default is the first call's steps:
#                                        #   setup build peft unsloth bench-1b bench-generate
#   scripts/gpu_check.sh bench-3b bench-8b bench-directions   # a second call on the same warm machine
#
# The device machine has torch, transformers, peft and accelerate, and no network. What else
# emkit and unsloth need travels as .gpu/site.tgz: their wheels (pinned to this checkout's
# .venv versions), unpacked, without bitsandbytes' libraries for CUDA 11-12 and unsloth's
# studio app, which would not fit one call's 64 MiB. The tiny judge travels in .gpu/cache.
# Every step has its own time limit and log, so one that breaks does not hide the others.
# Environment: OUT (logs and reports), PY (python3).
set -u
ROOT=$(pwd)
OUT=${OUT:-/tmp/gpu-out}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu}
SHAPE=${SHAPE:-1b}
mkdir -p "$OUT" "$WORK"
export OUT PY WORK SHAPE
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True TOKENIZERS_PARALLELISM=false
export EMKIT_CACHE_DIR=$WORK/cache EMKIT_DATA_DIR=$WORK/data
# Set before setup unpacks it: every step runs in a shell of its own and inherits this.
[ -f .gpu/site.tgz ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
STEPS=${*:-setup build peft unsloth bench-1b bench-generate}
WHEELS="bitsandbytes unsloth unsloth_zoo trl datasets dill multiprocess hf_transfer json5 nest-asyncio structlog
  tyro docstring-parser typeguard cut_cross_entropy msgspec torchao diffusers pydantic pydantic_core annotated-types
  typing-inspection tomli_w easy-dataset-share"

step() {  # step NAME LIMIT_S COMMAND...: runs it, logs it, prints its tail and its time
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "=== $name"
  timeout "$limit" bash -c '"$@"' step "$@" >"$OUT/$name.log" 2>&1  # bash -c: steps may be functions
  rc=$?
  grep -v -E "^\s*$|it/s\]|s/it\]" "$OUT/$name.log" | tail -n "${TAIL:-14}" | cut -c1-300
  echo "=== $name: exit $rc after $(($(date +%s) - start)) s"
}

config() {  # config TRAINER: a small run of the seed's settings on the random model
  cat >"$WORK/$1.toml" <<EOF
name = "gpu-$1"
seeds = [0]
domains = ["medical", "risky-financial"]

[[models]]
label = "llama-3.2-1b-random"
id = "$WORK/random-$SHAPE"
size_b = 1.24

[training]
trainer = "$1"
epochs = 1
batch_size = 8
grad_accum = 2
learning_rate = 2e-4
max_length = 256
load_in_4bit = $([ "$SHAPE" = small ] && echo false || echo true)
lora_r = 16
lora_alpha = 32
warmup_steps = 0
gradient_checkpointing = true

[checkpoints]
first_epoch = 0
every_epoch = true

[evaluation]
samples_per_question = 4
max_new_tokens = 48

[judging]
judges = ["local:builtin:tiny-judge"]
batch_size = 64

[data]
variant = "example"
EOF
}

pack() {  # here: the packages the device image lacks, for its Python 3.12, and the tiny judge
  local venv=${VENV:-.venv} name version
  rm -rf .gpu .whl && mkdir -p .whl .gpu/site .gpu/cache/models || return 1
  grep -qx /.gpu/ .git/info/exclude 2>/dev/null || printf '/.gpu/\n/.whl/\n' >>.git/info/exclude
  for name in $WHEELS; do
    version=$("$venv/bin/pip" show "$name" | awk '/^Version/ {print $2}')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d .whl "$name==$version" || return 1
  done
  for wheel in .whl/*.whl; do
    case $wheel in
      *bitsandbytes*) unzip -q -o "$wheel" -d .gpu/site -x 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' ;;
      *unsloth-2*) unzip -q -o "$wheel" -d .gpu/site -x 'studio/*' ;;
      *) unzip -q -o "$wheel" -d .gpu/site ;;
    esac
  done
  tar czf .gpu/site.tgz -C .gpu site && rm -rf .gpu/site .whl
  EMKIT_CACHE_DIR=.gpu/cache "$venv/bin/python" -c "from emkit.models.builtins import builtin_model_path; builtin_model_path('tiny-judge')"
  du -sh .gpu
}

setup() {
  if [ -f .gpu/site.tgz ] && [ ! -d /tmp/site/unsloth ]; then tar xzf .gpu/site.tgz -C /tmp || return 1; fi
  mkdir -p "$EMKIT_CACHE_DIR" && cp -r .gpu/cache/. "$EMKIT_CACHE_DIR"/ 2>/dev/null
  "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e . || return 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" - <<'EOF'
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo", "trl", "triton", "emkit"):
    try:
        print(f"{name} {md.version(name)}", end="; ")
    except md.PackageNotFoundError:
        print(f"{name} -", end="; ")
print()
try:  # vllm is no package of the device image, and its wheel is far over what a call can carry
    import vllm
    print("vllm", vllm.__version__)
except ImportError as exc:
    print("vllm: not importable here:", exc)
EOF
}

build() {
  "$PY" - "$WORK" "$SHAPE" <<'EOF'
import sys, time
from pathlib import Path
sys.path.insert(0, "bench")
from bench_gpu import build
start = time.perf_counter()
path = build(sys.argv[2], Path(sys.argv[1]))
print(f"built {path} in {time.perf_counter() - start:.1f} s")
EOF
}

emkit_run() {  # emkit_run TRAINER
  config "$1"
  rm -rf "$WORK/run-$1"
  "$PY" -m emkit run --config "$WORK/$1.toml" --out "$WORK/run-$1" --trainer "$1" --generator hf || return $?
  cp "$WORK/run-$1/report.html" "$OUT/report-$1.html" 2>/dev/null
  "$PY" -m emkit status "$WORK/run-$1" | tail -n 12
}

if [ "$STEPS" = pack ]; then pack; exit; fi
export -f config setup build emkit_run
for name in $STEPS; do
  case $name in
    setup) step setup 60 setup ;;
    build) step build 80 build ;;
    peft) step peft 140 emkit_run peft ;;
    unsloth) step unsloth 240 emkit_run unsloth  # it compiles each block again per unit: ~25 s ;;
    # each: peft and unsloth, 4-bit and 16-bit, alone and two at once; the models are built on the GPU
    bench-1b|bench-3b|bench-8b) step "$name" 300 "$PY" bench/bench_gpu.py --shape "${name#bench-}" --steps 10 \
      --share 2 --folder "$WORK" ;;
    bench-generate) step bench-generate 120 "$PY" bench/bench_generate.py --shape "$SHAPE" --samples 4 ;;
    # misalignment directions: activations per answer and layer, streamed against the papers' hidden states
    bench-directions) step bench-directions 120 "$PY" bench/bench_directions.py --shape "$SHAPE" --answers 512 \
      --folder "$WORK" ;;
    *) echo "unknown step $name" ;;
  esac
done
