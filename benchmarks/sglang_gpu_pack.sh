#!/usr/bin/env bash
# Build SGLang 0.5.17 for an offline GPU machine whose image already has Python 3.12, torch 2.11.0
# (CUDA 13), torchvision, torchaudio and triton, and pack what the image lacks as tar.zst pieces.
# Runs on any Linux machine that reaches the package index (no GPU needed); a few minutes and
# about 300 MiB of downloads. Install on the GPU machine with benchmarks/sglang_gpu_install.sh.
#
#   bash benchmarks/sglang_gpu_pack.sh WORKDIR PIECEDIR [PIECE_SIZE]
#     PIECE_SIZE  default 60800000 bytes (60.8 MB: a transfer to the GPU machine carries at most 64 MiB,
#                 one piece and the repository together)
#   WITH_FA3=1    keep sgl_kernel's FlashAttention-3 library (sgl_kernel/flash_ops.abi3.so, 1.1 GB
#                 unpacked: many more pieces); default: leave it out and run SGLang with
#                 attention_backend: triton. Either way it is a hard check: the script fails when the
#                 library is not where it expects it (another sglang-kernel layout).
#   PY312=...     a python3.12 (found on PATH or under ~/.pyenv otherwise)
#   DRY_RUN=1     stop after resolving (prints the closure's size; downloads only metadata)
#   ONLY_TRIM=1   only the FA3 trim (step 7) over an existing WORKDIR/site (the tests use it)
#
# WORKDIR gets venv/ (a current pip on Python 3.12), stubs/, report.json, need.txt, trimmed.txt,
# dl/ (the wheels), site/ (the installed folder) and ssite.tar.zst; PIECEDIR gets
# ssite.tar.zst.part-aa, -ab, ..., ssite.sha256 and (copied) the zstd binary.
#
# The method: resolve SGLang's closure against stand-in wheels for the packages the GPU image has at
# fixed versions (torch 2.11.0 pins an NCCL wheel the index no longer lists, so the real torch cannot
# be resolved), drop everything the image already has, leave out what a Llama-shaped model on Hopper
# never loads, install the rest into one folder with --target, and split it.
set -euo pipefail
W=${1:?workdir}; PD=${2:?piecedir}; PIECE=${3:-60800000}
LIMIT=60800000     # the largest piece that travels with the repository in one transfer

# step 7's hard check: sglang-kernel 0.4.5 keeps FlashAttention-3 in sgl_kernel/flash_ops.abi3.so
# (imported only by sgl_kernel/flash_attn.py, i.e. by attention_backend fa3). Not finding it means
# the layout changed: then neither "left out" nor "kept" can be promised, so stop.
trim_fa3() {
  local found
  found=$(find site/sgl_kernel -name 'flash_ops*.so' 2>/dev/null || true)
  if [ -z "$found" ]; then
    echo "FA3 check failed: no flash_ops*.so under $PWD/site/sgl_kernel (sglang-kernel's layout changed?):" \
         "find where FlashAttention-3 lives now and update trim_fa3" >&2
    return 1
  fi
  if [ "${WITH_FA3:-0}" = 1 ]; then
    echo "FA3 kept (WITH_FA3=1): $found"
    return 0
  fi
  find site/sgl_kernel -name 'flash_ops*.so' -print -delete | sed 's/^/FA3 left out: /'
  if [ -n "$(find site/sgl_kernel -name 'flash_ops*.so')" ]; then
    echo "FA3 check failed: flash_ops*.so still under site/sgl_kernel after deleting it" >&2
    return 1
  fi
}
if [ "${ONLY_TRIM:-0}" = 1 ]; then cd "$W" && trim_fa3; exit; fi
start=$(date +%s)
# a python3.12 that runs (a pyenv shim is found on PATH but may fail when 3.12 is not selected)
if [ -z "${PY312:-}" ]; then
  for c in "$(command -v python3.12 || true)" $(ls -1 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do
    if [ -n "$c" ] && "$c" -c "import sys; assert sys.version_info[:2] == (3, 12)" >/dev/null 2>&1; then PY312=$c; break; fi
  done
fi
[ -n "${PY312:-}" ] && "$PY312" -c "import sys" >/dev/null 2>&1 || { echo "need a python3.12 (set PY312)" >&2; exit 1; }
command -v zstd >/dev/null || { echo "need zstd" >&2; exit 1; }
mkdir -p "$W" "$PD"; W=$(cd "$W" && pwd); PD=$(cd "$PD" && pwd); cd "$W"

# 1. a Python 3.12 venv with a current pip (resolver, --report)
[ -x venv/bin/pip ] || "$PY312" -m venv venv
venv/bin/pip install -q --upgrade pip

# 2. stand-in wheels: what the image has at a fixed version, so the resolver neither downloads them
#    nor follows their pins. numba/llvmlite are stubbed so they are not carried (SGLang pins numba,
#    which asks for numpy < 2.5, but never imports it at server start); numpy is stubbed at 2.3.5 only
#    to satisfy such metadata: the image's numpy 2.5.2 is what runs.
mkdir -p stubs
venv/bin/python - <<'PYEOF'
import base64, hashlib, os, zipfile
def stub(name, ver, outdir="stubs"):
    dist = f"{name.replace('-', '_')}-{ver}"
    path = os.path.join(outdir, f"{dist}-py3-none-any.whl")
    files = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            data = text.encode()
            z.writestr(p, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{p},sha256={digest},{len(data)}")
        record.append(f"{dist}.dist-info/RECORD,,")
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
for spec in ("torch==2.11.0+img", "torchvision==0.26.0+img", "torchaudio==2.11.0+img", "triton==3.6.0+img",
             "numba==0.65.1+img", "llvmlite==0.47.0+img", "numpy==2.3.5+img"):
    stub(*spec.split("=="))
PYEOF

# 3. constraints: the stand-ins, SGLang's CUDA 13 companions, and the image's own versions of what the
#    closure shares with it. transformers 5.12.1 (SGLang's pin) and tokenizers 0.22.2 (transformers
#    5.12.1 needs <= 0.23.0) are carried even though the image has other versions: on PYTHONPATH they
#    shadow the image's.
cat > cons.txt <<'CONS'
torch==2.11.0+img
torchvision==0.26.0+img
torchaudio==2.11.0+img
triton==3.6.0+img
numba==0.65.1+img
llvmlite==0.47.0+img
numpy==2.3.5+img
sglang-kernel==0.4.5
flashinfer-python==0.6.15.post1
transformers==5.12.1
tokenizers==0.22.2
huggingface-hub==1.33.0
safetensors==0.8.0
nvidia-ml-py==13.610.43
CONS
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp"
for n in 17 24 27 28 31 34; do PLAT="$PLAT --platform manylinux_2_${n}_x86_64"; done   # sglang is manylinux_2_34
PLAT="$PLAT --platform manylinux2014_x86_64 --platform linux_x86_64"

# 4. resolve the closure (nothing installed); joulebench's own light dependencies join it
# shellcheck disable=SC2086
venv/bin/pip install --dry-run --ignore-installed --report report.json $PLAT --target "$W/dummy" \
  -f stubs -c cons.txt "sglang==0.5.17" "sglang-kernel==0.4.5" "flashinfer-python[cu13]==0.6.15.post1" \
  "pydantic>=2.7" httpx pyyaml > resolve.log 2>&1 || { tail -30 resolve.log >&2; exit 1; }

# 5. drop what the GPU image has (its package list) and what is trimmed; keep the forced carries
venv/bin/python - <<'PYEOF'
import json, re
image = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
carry = {"transformers", "tokenizers"}      # SGLang's pins, shadowing the image's on PYTHONPATH
# Left out: Blackwell-only / MLA / DeepSeek kernels and their toolchains, nvcc/nvvm (no JIT here:
# sampling_backend pytorch), the CuTe DSL and FlashAttention-4 built on it (Blackwell; FA4 and MoE
# paths only), video/audio decoders.
trim = """tokenspeed-triton tokenspeed-mla tilelang z3-solver nvidia-nvvm nvidia-cuda-nvcc nvidia-cuda-crt
nvidia-cuda-nvdisasm nvidia-cuda-cccl pynvvideocodec torchcodec decord decord2 av nvidia-cutlass-dsl
nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-core nvidia-cutlass-dsl-libs-cu12
nvidia-cutlass-dsl-libs-cu13 quack-kernels flash-mla deep-gemm sgl-fa4 flashinfer-cubin
flashinfer-jit-cache flash-attn-4""".split()
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
report = json.load(open("report.json"))
need, dropped = [], []
for item in report["install"]:
    name, version = norm(item["metadata"]["name"]), item["metadata"]["version"]
    if "+img" in version or (name in image and name not in carry):
        continue
    (dropped if name in trim else need).append(f"{name}=={version}")
need.append("typing-extensions==4.16.0")   # the image's is older than pydantic 2.14 needs
need = sorted(set(need))
open("need.txt", "w").write("\n".join(need) + "\n")
open("trimmed.txt", "w").write("\n".join(sorted(dropped)) + "\n")
print(f"{len(need)} wheels to carry, {len(dropped)} trimmed (see need.txt, trimmed.txt)")
PYEOF
if [ "${DRY_RUN:-0}" = 1 ]; then echo "dry run: resolved only"; exit 0; fi

# 6. download exactly those wheels, install them into one folder (no dependencies: the closure is complete)
rm -rf dl site; mkdir -p dl site
# shellcheck disable=SC2086
venv/bin/pip download --no-deps -q -d dl $PLAT -r need.txt
venv/bin/pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$W/site" dl/*.whl

# 7. trim inside the packages: sgl_kernel's FlashAttention-3 library (unless WITH_FA3=1; then run
#    attention_backend fa3), console scripts (the folder is used through PYTHONPATH)
trim_fa3 || exit 1
rm -rf site/bin

# 8. pack and split
rm -f ssite.tar.zst "$PD"/ssite.tar.zst.part-*
tar -C site -cf - . | zstd -12 --long=27 -T2 -q -o ssite.tar.zst
split -b "$PIECE" ssite.tar.zst "$PD/ssite.tar.zst.part-"
( cd "$PD" && sha256sum ssite.tar.zst.part-* > ssite.sha256 )
cp "$(command -v zstd)" "$PD/"          # the GPU image has no zstd binary
ls -l dl | awk 'NR>1{print $5, $9}' | sort -k2 > wheels_carried.txt
du -sb site ssite.tar.zst; ls -l "$PD"
echo "wheels carried: $(ls dl/*.whl | wc -l); pieces (bytes):"
over=0
for p in "$PD"/ssite.tar.zst.part-*; do
  size=$(stat -c %s "$p"); echo "  $(basename "$p") $size"
  [ "$size" -le "$LIMIT" ] || over=1
done
echo "total $(cat "$PD"/ssite.tar.zst.part-* | wc -c) bytes in $(ls "$PD"/ssite.tar.zst.part-* | wc -l) pieces," \
     "$(( $(date +%s) - start )) s (without FA3 the 0.5.17 set is 3 pieces)"
[ "$over" = 0 ] || echo "WARNING: a piece is over $LIMIT bytes: it will not travel with the repository in one transfer" >&2
