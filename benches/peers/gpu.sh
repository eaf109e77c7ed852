#!/usr/bin/env bash
# lookalike on a GPU (wgpu) against PyTorch on CUDA, on one machine in one run (issue 17).
#
# Build here, run there (the GPU machine needs no Rust, only PyTorch with CUDA and a Vulkan
# driver):
#   benches/peers/gpu.sh prepare          # builds `speed --features wgpu` into target/gpu with
#                                         # the MobileNetV2 and Lite1 weights (about 46 MB)
#   benches/peers/gpu.sh run OUT_DIR      # on the GPU machine, from the repository root
# `run` writes ours.json (lookalike), peers.json and peers.md (the table: ratio above 1 means
# lookalike is faster) and both logs into OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODELS=${MODELS:-mobilenet_v2,efficientnet_lite1,resnet18}
SECONDS_EACH=${SECONDS_EACH:-2}

case "${1:-}" in
prepare)
    cargo build --release -p benches --features wgpu --bin speed
    mkdir -p target/gpu
    strip -o target/gpu/speed target/release/speed
    xz -f -T2 target/gpu/speed
    for w in mobilenet_v2-b0353104.pth efficientnet-lite1-77cc7160.pth; do
        cp "${LOOKALIKE_WEIGHTS:-weights}/$w" target/gpu/
    done
    du -sh target/gpu
    ;;
run)
    out=${2:?usage: gpu.sh run OUT_DIR}
    mkdir -p "$out"
    [ -x target/gpu/speed ] || { xz -dkf target/gpu/speed.xz && chmod +x target/gpu/speed; }
    export LOOKALIKE_WEIGHTS=$PWD/target/gpu
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
    target/gpu/speed --device wgpu --models "$MODELS" --only forward,train \
        --seconds "$SECONDS_EACH" --out "$out/ours.json" 2>&1 | tee "$out/ours.log"
    PYTHONUNBUFFERED=1 python3 benches/peers/peers.py --here --device cuda \
        --ours "$out/ours.json" --models "$MODELS" --only forward,train \
        --seconds "$SECONDS_EACH" --out "$out/peers.json" --markdown "$out/peers.md" \
        2>&1 | tee "$out/peers.log"
    ;;
*)
    echo "usage: $0 prepare | run OUT_DIR" >&2
    exit 2
    ;;
esac
