#!/usr/bin/env bash
# Build vLLM 0.26.0 for an offline GPU machine (Python 3.12, torch 2.11.0 + CUDA 13 already installed
# there) on a machine that reaches the package index, and pack it as tar.zst pieces small enough to send
# one per transfer. Install the pieces there with scripts/vllm-gpu-install.sh (docs/engines.md).
#
#   bash scripts/vllm-gpu-pack.sh WORKDIR PIECEDIR [PIECE_SIZE]     (PIECE_SIZE default 58M)
#
# Why 0.26.0: it is the newest vLLM release that pins torch==2.11.0, the GPU image's torch.
# WORKDIR gets: venv/ (a current pip on Python 3.12), stubs/, report.json, dl/ (the wheels), site/
# (the installed folder) and vsite.tar.zst; PIECEDIR gets vsite.tar.zst.part-aa, -ab, ... and a sha256 list.
# What is left out and why is written below (step 5 and 7): packages the GPU image has, Blackwell-only
# and other-model kernels, nvcc/nvvm, video decoders, FlashAttention 2 (Hopper runs FA3), the CuTe DSL.
set -euo pipefail
W=${1:?workdir}; PD=${2:?piecedir}; PIECE=${3:-58M}
PY312=${PY312:-$(command -v python3.12 || ls -1 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)}
[ -x "$PY312" ] || { echo "need a python3.12 (set PY312)"; exit 1; }
mkdir -p "$W" "$PD"; PD=$(cd "$PD" && pwd); cd "$W"

# 1. a Python 3.12 venv with a current pip (resolver + --report)
[ -x venv/bin/pip ] || "$PY312" -m venv venv
venv/bin/pip install -q --upgrade pip

# 2. stub wheels: packages the GPU image already has at a fixed version, so the resolver
#    neither downloads them nor follows their pins (torch 2.11.0 pins
#    nvidia-nccl-cu13==2.28.9 and the CUDA wheels). numpy is stubbed at 2.3.5+img only to
#    satisfy numba's/mistral-common's numpy<2.5/<2.4 metadata: the image's numpy 2.5.2 is used.
mkdir -p stubs
venv/bin/python - <<'EOF'
import zipfile, hashlib, base64, os
def mk(name, ver, outdir="stubs"):
    dist = f"{name.replace('-', '_')}-{ver}"
    fn = os.path.join(outdir, f"{dist}-py3-none-any.whl")
    files = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    rec = []
    with zipfile.ZipFile(fn, "w") as z:
        for p, c in files.items():
            b = c.encode(); z.writestr(p, b)
            h = base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
            rec.append(f"{p},sha256={h},{len(b)}")
        rec.append(f"{dist}.dist-info/RECORD,,")
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(rec) + "\n")
for s in ["torch==2.11.0+img", "torchvision==0.26.0+img", "torchaudio==2.11.0+img", "triton==3.6.0+img",
          "numba==0.65.0+img", "llvmlite==0.47.0+img", "numpy==2.3.5+img"]:
    mk(*s.split("=="))
EOF

# 3. constraints: stubs, plus the image's own versions of what vllm's closure shares with it
cat > cons.txt <<'EOF'
torch==2.11.0+img
torchvision==0.26.0+img
torchaudio==2.11.0+img
triton==3.6.0+img
numba==0.65.0+img
llvmlite==0.47.0+img
numpy==2.3.5+img
transformers==5.17.0
huggingface-hub==1.33.0
tokenizers==0.23.2
safetensors==0.8.0
typer==0.27.2
nvidia-ml-py==13.610.43
EOF
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp"
for n in 17 24 27 28 31 34 35 39; do PLAT="$PLAT --platform manylinux_2_${n}_x86_64"; done
PLAT="$PLAT --platform manylinux2014_x86_64 --platform linux_x86_64"

# 4. resolve the closure (nothing installed), list it
venv/bin/pip install --dry-run --ignore-installed --report report.json $PLAT --target "$W/dummy" \
  -f stubs -c cons.txt vllm==0.26.0 > resolve.log 2>&1

# 5. drop what the GPU image has (its package list), and the trimmed wheels
venv/bin/python - <<'EOF'
import json, re
img = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
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
# trimmed: Blackwell/MLA/DSv4-only kernels and their toolchains, video decoders, the CuTe DSL
# (only FA4 / MoE-router paths; Llama on Hopper uses FA3 + cuBLAS), nvcc/nvvm/crt.
trim = """tokenspeed-triton tokenspeed-mla tilelang z3-solver nvidia-nvvm nvidia-cuda-nvcc nvidia-cuda-crt
nvidia-cuda-nvdisasm nvidia-cuda-cccl pynvvideocodec torchcodec nvidia-cutlass-dsl
nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-core nvidia-cutlass-dsl-libs-cu12
nvidia-cutlass-dsl-libs-cu13 quack-kernels""".split()
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
r = json.load(open("report.json"))
need, dropped = [], []
for it in r["install"]:
    n, v = norm(it["metadata"]["name"]), it["metadata"]["version"]
    if n in img:
        continue
    (dropped if n in trim else need).append(f"{n}=={v}")
# the image's typing_extensions is older than pydantic 2.14 needs
need.append("typing-extensions==4.16.0")
open("need.txt", "w").write("\n".join(sorted(need)) + "\n")
open("trimmed.txt", "w").write("\n".join(sorted(dropped)) + "\n")
print(len(need), "wheels to carry;", len(dropped), "trimmed")
EOF

# 6. download exactly those wheels, install them into one folder
rm -rf dl site; mkdir -p dl site
venv/bin/pip download --no-deps -q -d dl $PLAT -r need.txt
venv/bin/pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$W/site" dl/*.whl

# 7. trim inside vllm: FlashAttention 2 (Hopper uses FA3), the Rust frontend binary,
#    deep_gemm builds for other Pythons, the Blackwell-only fmha_sm100 sources
rm -f site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so site/vllm/vllm-rs \
      site/vllm/third_party/deep_gemm/_C.cpython-31[0134]-x86_64-linux-gnu.so
rm -rf site/vllm/third_party/fmha_sm100 site/bin

# 8. pack and split
rm -f vsite.tar.zst "$PD"/vsite.tar.zst.part-*
tar -C site -cf - . | zstd -12 --long=27 -T2 -q -o vsite.tar.zst
split -b "$PIECE" vsite.tar.zst "$PD/vsite.tar.zst.part-"
( cd "$PD" && sha256sum vsite.tar.zst.part-* > vsite.sha256 )
ls -l dl | awk 'NR>1{print $5, $9}' | sort -k2 > wheels_carried.txt
du -sb site vsite.tar.zst; ls -l "$PD"
