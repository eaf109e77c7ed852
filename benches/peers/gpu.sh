#!/usr/bin/env bash
# lookalike on a GPU through wgpu against PyTorch on CUDA, on one machine in one run (issue 17).
#
# Build here, run there (the GPU machine needs no Rust, only PyTorch with CUDA and a Vulkan
# driver):
#   benches/peers/gpu.sh prepare          # builds `speed --features wgpu` into target/gpu and
#                                         # copies the weights named in $GPU_WEIGHTS
#   benches/peers/gpu.sh run OUT_DIR      # on the GPU machine, from the repository root
# `run` writes ours-<build>.json (lookalike's figures), peers.json and peers.md (the table: ratio
# above 1 means lookalike is faster) and the logs into OUT_DIR.
#
# BUILDS lists feature sets of the benches package, one build each, compared in one table
# against the same PyTorch figures: BUILDS="wgpu wgpu,burn/autotune,burn/fusion" measures
# Burn's autotuned kernels and fusion beside the plain build. A model without its weights in
# target/gpu runs with random weights on both sides (a GPU's speed does not depend on the
# values); each build is about 15 MB compressed, and a transfer to the GPU machine holds 64 MiB.
set -uo pipefail
cd "$(dirname "$0")/../.."
MODELS=${MODELS:-mobilenet_v2,efficientnet_lite1,resnet18}
BUILDS=${BUILDS:-wgpu}
GPU_WEIGHTS=${GPU_WEIGHTS:-mobilenet_v2-b0353104.pth efficientnet-lite1-77cc7160.pth}
SECONDS_EACH=${SECONDS_EACH:-2}
# Each model on each build stops after this many seconds (a first run compiles and autotunes
# every kernel), and no model starts after SPEED_BUDGET seconds of lookalike's runs, which
# leaves PyTorch its turn inside a limited lease.
TIMEOUT_EACH=${TIMEOUT_EACH:-240}
SPEED_BUDGET=${SPEED_BUDGET:-1800}

# A build's name in file names and the table: its features, `,` and `/` as `-`.
label() { echo "${1//[,\/]/-}"; }

case "${1:-}" in
prepare)
    set -e
    mkdir -p target/gpu
    for build in $BUILDS; do
        cargo build --release -p benches --features "$build" --bin speed
        strip -o "target/gpu/speed-$(label "$build")" target/release/speed
        xz -f -T2 "target/gpu/speed-$(label "$build")"
    done
    for w in $GPU_WEIGHTS; do
        cp "${LOOKALIKE_WEIGHTS:-weights}/$w" target/gpu/
    done
    du -sh target/gpu
    ;;
run)
    out=${2:?usage: gpu.sh run OUT_DIR}
    mkdir -p "$out"
    parts=$(mktemp -d)
    export LOOKALIKE_WEIGHTS=$PWD/target/gpu
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee "$out/ours.log"
    ours=()
    for features in $BUILDS; do
        build=$(label "$features")
        speed=target/gpu/speed-$build
        [ -x "$speed" ] || { xz -dkf "$speed.xz" && chmod +x "$speed"; } || continue
        # One model a call, so a build that fails keeps the models it finished; `speed` rewrites
        # its JSON after each figure, so a model cut short keeps those it measured.
        mkdir -p "$parts/$build"
        for model in ${MODELS//,/ }; do
            left=$((SPEED_BUDGET - SECONDS))
            if [ "$left" -le 10 ]; then
                echo "== $build: $model skipped (SPEED_BUDGET spent)" | tee -a "$out/ours.log"
                continue
            fi
            echo "== $build: $model" | tee -a "$out/ours.log"
            timeout "$((left < TIMEOUT_EACH ? left : TIMEOUT_EACH))" "$speed" --device wgpu \
                --models "$model" --only forward,train --seconds "$SECONDS_EACH" \
                --out "$parts/$build/$model.json" >> "$out/ours.log" 2>&1 \
                || echo "== $build: $model failed or timed out (exit $?)" | tee -a "$out/ours.log"
        done
        if compgen -G "$parts/$build/*.json" > /dev/null; then
            python3 -c 'import json, sys; print(json.dumps([m for f in sys.argv[1:] for m in json.load(open(f))], indent=2))' \
                "$parts/$build"/*.json > "$out/ours-$build.json"
            ours+=(--ours "$build=$out/ours-$build.json")
        fi
    done
    [ ${#ours[@]} -gt 0 ] || { echo "lookalike ran no model; see $out/ours.log" >&2; exit 1; }
    PYTHONUNBUFFERED=1 python3 benches/peers/peers.py --here --device cuda "${ours[@]}" \
        --models "$MODELS" --only forward,train \
        --seconds "$SECONDS_EACH" --out "$out/peers.json" --markdown "$out/peers.md" \
        2>&1 | tee "$out/peers.log"
    ;;
*)
    echo "usage: $0 prepare | run OUT_DIR" >&2
    exit 2
    ;;
esac
