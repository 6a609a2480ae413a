#!/usr/bin/env bash
# The GPU check (docs/gpu.md): the CUDA tests, the GPU bench and a whole main.py run, each
# timed, then one table; the log and the table under $OUT when it is set.
#
#   bash scripts/gpu_check.sh             on a machine with an NVIDIA GPU (under 8 minutes)
#   bash scripts/gpu_check.sh --dry-run   the same steps on the CPU at a tiny size
#   bash scripts/gpu_check.sh --prepare   copy the real Fashion-MNIST (Debian's) and this
#                                         commit into gpu_data/, to travel with the tree
#
# Python: ${PYTHON:-python3}, with torch, torchvision, numpy, matplotlib, tqdm, tensorboard and
# pytest (a machine's own, no venv needed). $GPU_DATA overrides gpu_data/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHON="${PYTHON:-python3}"
gpu_data="${GPU_DATA:-$root/gpu_data}"
source_dir="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"

prepare() {
    local files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte
        t10k-labels-idx1-ubyte)
    mkdir -p "$gpu_data/fashion-mnist"
    for name in "${files[@]}"; do
        if [ -f "$source_dir/$name.gz" ]; then
            cp "$source_dir/$name.gz" "$gpu_data/fashion-mnist/"
        elif [ -f "$source_dir/$name" ]; then
            cp "$source_dir/$name" "$gpu_data/fashion-mnist/"
        else
            echo "gpu_check --prepare: $source_dir has no $name(.gz); install Debian's" \
                "dataset-fashion-mnist (make data) or set FASHION_MNIST_DIR" >&2
            exit 2
        fi
    done
    local commit
    if commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null)"; then
        if [ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]; then
            commit="$commit-dirty"
        fi
    else
        commit=unknown
    fi
    echo "$commit" >"$gpu_data/COMMIT"
    echo "gpu_data ready: $(du -sh "$gpu_data" | cut -f1) in $gpu_data (commit $commit);" \
        "carry [\"gpu_data\"] with the tree and run: bash scripts/gpu_check.sh"
}

case "${1:-}" in
    --prepare) prepare ;;
    --dry-run) exec "$PYTHON" scripts/gpu_check.py --dry-run "${@:2}" ;;
    "" | --budget) exec "$PYTHON" scripts/gpu_check.py "$@" ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
    *)
        echo "gpu_check: unknown option $1 (--prepare, --dry-run, --budget SECONDS, --help)" >&2
        exit 2
        ;;
esac
