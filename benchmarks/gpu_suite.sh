#!/usr/bin/env bash
# Every GPU figure that issues 3 and 5 ask for, in one command sized for one device lease (a few
# minutes on an H100; each benchmark has its own time limit, so one hang costs only its share):
# the CAM engine vs grad-cam, Score-CAM / Ablation-CAM vs grad-cam, the inference copy, ROAD,
# deletion/insertion and SSIM consistency vs their references, GPU determinism, and the paper
# config's per-image cost in seconds. Output: OUTDIR/suite.txt (every benchmark's printout) and
# OUTDIR/device.txt (nvidia-smi, torch, the package versions).
#
# On a lent machine (nothing can be fetched there): run benchmarks/gpu_wheels.sh here once, then
#   device run: command "bash benchmarks/gpu_suite.sh $OUT", carry [".whl"], timeout_s 600
# --check runs each benchmark's --help instead (its imports and argument parser), in seconds, to
# find a missing package before spending device time; DEVICE=cpu PYTHON=.venv/bin/python runs the
# suite on the CPU.
# Usage: bash benchmarks/gpu_suite.sh [--check] [OUTDIR]
set -uo pipefail
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$root/results/gpu_suite}" && cd "${1:-$root/results/gpu_suite}" && pwd)
py=${PYTHON:-python3}
case $py in */*) py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") ;; esac  # the suite runs from benchmarks/
device=${DEVICE:-cuda}
if ! "$py" -c "import pytorch_grad_cam, ttach, jsonschema" 2>/dev/null && ls "$root"/.whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_suite_site \
    "$root"/.whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu_suite_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$root/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
cd "$root/benchmarks"
{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import sys, torch, torchvision; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  "$py" -m pip list 2>/dev/null | grep -i -E '^(grad-cam|scikit-image|numpy|scipy|h5py|pandas) '
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

failed=0
checks=()
step() {  # step NAME SECONDS SCRIPT ARGS...: one benchmark, its printout appended to suite.txt
  local name=$1 limit=$2; shift 2
  if [ $check = 1 ]; then checks+=("$name=$1"); return; fi
  echo "== $name ($device, limit ${limit} s): $*" | tee -a "$out/suite.txt"
  local start=$SECONDS
  timeout "$limit" "$py" "$@" --device "$device" 2>&1 | grep -v -E 'it/s\]|s/it\]' | tee -a "$out/suite.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/suite.txt"
  [ "$rc" = 0 ] || failed=1
}
[ $check = 1 ] || : > "$out/suite.txt"
# In order of what the open issues need most, in case the lease runs short.
step cam_engine          60 cam_engine.py --repeats 7
step cam_perturbation   120 cam_perturbation.py --arch resnet50 --size 224 --batch 2 --repeats 3
step road                90 road.py --repeats 3
step deletion_insertion  60 deletion_insertion.py --images 64 --repeats 3
step consistency         40 consistency.py --repeats 5
step inference_copy      40 inference_copy.py --repeats 7
step determinism         45 determinism.py --batch 4
step shard_throughput   120 shard_throughput.py --images 4
if [ $check = 1 ]; then
  # Every benchmark's --help in one interpreter: torch and the references load once (5 s, not 40).
  "$py" - "${checks[@]}" <<'EOF' || failed=1
import contextlib, io, runpy, sys
failed = 0
for spec in sys.argv[1:]:
    name, path = spec.split("=", 1)
    sys.argv = [path, "--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            print(f"FAIL {name}: exit {stop.code}")
            failed = 1
            continue
    except BaseException as error:  # any failure to import or to parse is the finding
        print(f"FAIL {name}: {type(error).__name__}: {error}".splitlines()[0])
        failed = 1
        continue
    print(f"ok   {name}")
sys.exit(failed)
EOF
fi
exit $failed
