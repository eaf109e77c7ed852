#!/usr/bin/env python3
"""lookalike against its peers, measured in one run (issue 6).

Runs lookalike's own benchmark binary (`cargo run --release -p benches`), then the same models
and shapes in PyTorch (CPU, channels-first and channels-last), in ONNX Runtime (the same PyTorch
model exported to ONNX) and exact search in FAISS (flat L2 index) and numpy, and prints one table:
lookalike's figure, the peer's and the ratio (above 1: lookalike is faster).

    python3 benches/peers/peers.py                      # full run, about 15 minutes on 2 cores
    python3 benches/peers/peers.py --models mobilenet_v2 --gallery-sizes 10000 --seconds 1
    python3 benches/peers/peers.py --models resnet18 --only train --rounds 5

Each of lookalike's figures is measured right before its peers' (one `speed` call for each model
and measurement), so a ratio compares two figures taken within a minute of each other: this
machine's speed moves by up to half within minutes. `--rounds N` repeats the whole sequence N
times and reports each row's median ratio with its range (the figures shown are medians too).

The first run makes a virtual environment at target/peers-venv with the pinned packages of
requirements.txt beside this file (PyPI's torch wheel brings CUDA libraries: about 3 GB), then
re-runs itself inside it. Not part of CI.

Every peer gets the machine's threads the way lookalike does: PyTorch's intra-op pool, ONNX
Runtime's intra-op pool and FAISS's OpenMP pool are all set to --threads (default: all cores).
Weights: MobileNetV2 loads torchvision's file from the weights folder (`$LOOKALIKE_WEIGHTS`, else
weights/), as lookalike does; ResNet-18 has random weights on both sides (none can be fetched).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV = ROOT / "target" / "peers-venv"
REQUIREMENTS = pathlib.Path(__file__).resolve().parent / "requirements.txt"


def ensure_venv(script=__file__):
    """Re-runs `script` (this one unless said) inside target/peers-venv, making or updating it
    first (not with --here: a machine whose Python already has the peers, such as a GPU
    machine's PyTorch)."""
    if "--here" in sys.argv or pathlib.Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    stamp = VENV / "installed-requirements.txt"
    wanted = REQUIREMENTS.read_text()
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing peers into {VENV} (once)", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--progress-bar", "off", "-r", str(REQUIREMENTS)],
            check=True,
        )
        stamp.write_text(wanted)
    os.execv(str(python), [str(python), script, *sys.argv[1:]])


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenet_v2,resnet18")
    p.add_argument("--gallery-sizes", default="10000,100000,1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--folder", default=str(ROOT.parent / "shared/datasets/animals10/val/gallery"))
    p.add_argument("--seconds", type=float, default=3.0, help="each measurement runs at least this long")
    p.add_argument("--only", default="forward,train,folder,search",
                   help="which measurements (comma-separated: forward, train, folder, search, hnsw)")
    p.add_argument("--hnsw-sizes", default="100000",
                   help="synthetic clustered gallery sizes for the HNSW comparison (--only hnsw)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every measurement this many times, lookalike and peers "
                        "alternating; the table shows medians and each ratio's range")
    p.add_argument("--ours", action="append",
                   help="read lookalike's figures from this JSON instead of running the binary; "
                        "repeatable as LABEL=FILE, a row for each against the same peer "
                        "figures (gpu.sh, one a build: wgpu=ours-wgpu.json "
                        "wgpu-burn-autotune-burn-fusion=ours-wgpu-burn-autotune-burn-fusion.json)")
    p.add_argument("--out", default=str(ROOT / "target" / "peers" / "results.json"))
    p.add_argument("--markdown", help="also write the table as Markdown here")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: PyTorch on the GPU against lookalike's GPU figures (--ours from "
                        "`speed --device wgpu`); forward and train only, no ONNX Runtime")
    p.add_argument("--here", action="store_true",
                   help="use this Python's packages instead of target/peers-venv")
    return p.parse_args()


def measure(items, step, seconds, warmup=1, min_steps=2):
    """Items a second: `step` handles `items` items; warm-up runs, then at least `seconds`."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    steps = 0
    while steps < min_steps or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * items / (time.perf_counter() - start)


def run_ours(args, models, only):
    """lookalike's `speed` binary on `models` (comma-separated) and `only`: its figures by key."""
    out = pathlib.Path(args.out).with_name("ours.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["cargo", "run", "--release", "-q", "-p", "benches", "--",
           "--models", models, "--gallery-sizes", args.gallery_sizes, "--dim", str(args.dim),
           "--only", only, "--folder", args.folder, "--seconds", str(args.seconds), "--out", str(out)]
    print("lookalike:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return {m["key"]: m for m in json.loads(out.read_text())}


# --- networks -------------------------------------------------------------------------------

def weights_dir():
    return pathlib.Path(os.environ.get("LOOKALIKE_WEIGHTS", ROOT / "weights"))


WEIGHT_FILES = {
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
    "resnet18": None,
}
FEATURE_DIMS = {"mobilenet_v2": 1280, "efficientnet_lite1": 1280, "resnet18": 512}
INPUT_SIDES = {"mobilenet_v2": 224, "efficientnet_lite1": 240, "resnet18": 224}

# EfficientNet-Lite1's stages: (kernel, stride, expansion, channels, repeats), as
# crates/model/src/efficientnet_lite.rs builds them.
LITE1_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 40, 3), (3, 2, 6, 80, 4),
                (5, 1, 6, 112, 4), (5, 2, 6, 192, 5), (3, 1, 6, 320, 1)]


def efficientnet_lite1():
    """EfficientNet-Lite1 in the layout of the checkpoint lookalike loads (`_conv_stem`,
    `_blocks.N._expand_conv`…): TensorFlow "same" padding, ReLU6, batch-norm ε 1e-3."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class SameConv(nn.Conv2d):
        def forward(self, x):
            pads = []
            for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
                total = max((-(-size // s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            return super().forward(F.pad(x, pads) if any(pads) else x)

    def conv(i, o, k, stride=1, groups=1):
        if stride == 1:  # odd kernels: "same" is symmetric
            return nn.Conv2d(i, o, k, stride, k // 2, groups=groups, bias=False)
        return SameConv(i, o, k, stride, 0, groups=groups, bias=False)

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3)

    class Block(nn.Module):
        def __init__(self, i, o, k, stride, expand):
            super().__init__()
            mid = i * expand
            if expand != 1:
                self._expand_conv, self._bn0 = conv(i, mid, 1), bn(mid)
            self._depthwise_conv, self._bn1 = conv(mid, mid, k, stride, mid), bn(mid)
            self._project_conv, self._bn2 = conv(mid, o, 1), bn(o)
            self.expand, self.residual = expand != 1, stride == 1 and i == o

        def forward(self, x):
            y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return x + y if self.residual else y

    class Lite(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem, self._bn0 = conv(3, 32, 3, 2), bn(32)
            blocks, c = [], 32
            for k, s, e, o, n in LITE1_STAGES:
                for r in range(n):
                    blocks.append(Block(c, o, k, s if r == 0 else 1, e))
                    c = o
            self._blocks = nn.ModuleList(blocks)
            self._conv_head, self._bn1 = conv(c, 1280, 1), bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for b in self._blocks:
                x = b(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return Lite()


def weights_file(name):
    """torchvision's weight file for `name` when it is in the weights folder, else None."""
    if name not in WEIGHT_FILES:
        raise SystemExit(f"peers.py knows {', '.join(WEIGHT_FILES)}, not {name}")
    path = WEIGHT_FILES[name] and weights_dir() / WEIGHT_FILES[name]
    return path if path and path.exists() else None


def weights_note(name):
    return "" if weights_file(name) else " (random weights)"


def embedding_network(name):
    """The backbone as lookalike embeds with it (pooled features scaled to unit length), and
    its input side."""
    import torch
    import torchvision

    path = weights_file(name)
    if name == "mobilenet_v2":
        net = torchvision.models.mobilenet_v2()
        if path:
            net.load_state_dict(torch.load(path, map_location="cpu"))
        net.classifier = torch.nn.Identity()
    elif name == "efficientnet_lite1":
        net = efficientnet_lite1()
        if path:
            net.load_state_dict(torch.load(path, map_location="cpu"))
        net._fc = torch.nn.Identity()
    else:
        net = torchvision.models.resnet18()
        net.fc = torch.nn.Identity()

    class Embed(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return torch.nn.functional.normalize(self.backbone(x), dim=1)

    return Embed(net), INPUT_SIDES[name]


def synchronised(step, device):
    """`step`, then a wait for the device (a GPU queues work; a CPU step is done when it returns)."""
    import torch

    if device == "cpu":
        return step

    def run():
        step()
        torch.cuda.synchronize()

    return run


def torch_forward(name, batches, seconds, channels_last, device="cpu"):
    import torch

    net, side = embedding_network(name)
    net.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=fmt)
    figures = {}
    for b in batches:
        x = torch.randn(b, 3, side, side).to(device=device, memory_format=fmt)
        with torch.inference_mode():
            figures[b] = measure(b, synchronised(lambda: net(x), device), seconds)
    return figures


def onnx_forward(name, batches, seconds, threads, workdir):
    import numpy as np
    import onnxruntime as ort
    import torch

    net, side = embedding_network(name)
    net.eval()
    path = workdir / f"{name}.onnx"
    # The TorchScript exporter (its deprecation said once a run is noise here), whose tracer
    # warns that Lite1's "same" padding is read off the input's shape as a constant: only the
    # batch axis varies, so it is one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(net, (torch.randn(1, 3, side, side),), str(path), dynamo=False,
                          input_names=["x"], output_names=["embedding"],
                          dynamic_axes={"x": {0: "batch"}, "embedding": {0: "batch"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    figures = {}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, side, side), dtype=np.float32)
        figures[b] = measure(b, lambda: session.run(None, {"x": x}), seconds)
    return figures


def torch_train_step(name, batch, seconds, channels_last, device="cpu"):
    """Forward, backward of the same loss lookalike's step uses, AdamW over every parameter."""
    import torch

    net, side = embedding_network(name)
    net = net.to(device)
    backbone = net.backbone
    feature_dim = FEATURE_DIMS[name]
    head = torch.nn.Linear(feature_dim, 256).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    backbone.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backbone = backbone.to(memory_format=fmt)
    x = torch.randn(batch, 3, side, side).to(device=device, memory_format=fmt)

    def step():
        optimizer.zero_grad(set_to_none=True)
        projected = torch.nn.functional.normalize(head(backbone(x)), dim=1)
        loss = projected.pow(2).sum(1).mean()
        loss.backward()
        optimizer.step()

    return measure(batch, synchronised(step, device), seconds)


def torch_folder(name, folder, batch=32):
    """Decode (Pillow), resize and centre-crop (torchvision), forward, like `retrieval embed`."""
    import torch
    from PIL import Image
    from torchvision import transforms

    if not weights_file(name):
        return None
    net, side = embedding_network(name)
    net.eval()
    prep = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(side), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    files = sorted(p for p in pathlib.Path(folder).rglob("*") if p.is_file())
    start = time.perf_counter()
    done = 0
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            tensors = []
            for f in files[i:i + batch]:
                try:
                    tensors.append(prep(Image.open(f).convert("RGB")))
                except Exception:
                    continue
            if tensors:
                net(torch.stack(tensors))
                done += len(tensors)
    return done / (time.perf_counter() - start)


# --- search ---------------------------------------------------------------------------------

def unit_rows(n, dim, rng):
    import numpy as np

    rows = rng.random((n, dim), dtype=np.float32) - 0.5
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def search(size, dim, seconds, threads, queries=100, k=10):
    import faiss
    import numpy as np

    rng = np.random.default_rng(7)
    gallery = unit_rows(size, dim, rng)
    query = unit_rows(queries, dim, rng)
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatL2(dim)
    index.add(gallery)
    figures = {"FAISS (IndexFlatL2)": measure(queries, lambda: index.search(query, k), seconds)}
    gallery_norms = (gallery * gallery).sum(1)

    def numpy_step():
        d = gallery_norms[None, :] - 2.0 * (query @ gallery.T)
        top = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, top, 1).argsort(1)
        return np.take_along_axis(top, order, 1)

    figures["numpy (matmul + argpartition)"] = measure(queries, numpy_step, seconds)
    return figures


def hnsw(size, dim, threads):
    """FAISS IndexHNSWFlat (M 16, efConstruction 128) on the vectors lookalike's `ann` benchmark
    wrote, one query a call as lookalike measures it: lookalike's figures and FAISS's."""
    import faiss
    import numpy as np

    dump = ROOT / "target" / "peers" / "hnsw"
    cmd = ["cargo", "run", "--release", "-p", "benches", "--bin", "ann", "--",
           "--sizes", str(size), "--dim", str(dim), "--dump", str(dump),
           "--vectors", "f32,f16", "--ef", "32,64,128"]
    print("lookalike:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=ROOT, check=True)
    folder = dump / f"synthetic-{size}"
    base = np.fromfile(folder / "base.f32", dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(folder / "queries.f32", dtype="<f4").reshape(-1, dim)
    ours = json.loads((folder / "ours.json").read_text())
    faiss.omp_set_num_threads(threads)
    exact = faiss.IndexFlatL2(dim)
    exact.add(base)
    _, truth = exact.search(queries, 10)
    index = faiss.IndexHNSWFlat(dim, 16)
    index.hnsw.efConstruction = 128
    start = time.perf_counter()
    index.add(base)
    build = time.perf_counter() - start
    rows = []
    for figure in ours:
        index.hnsw.efSearch = figure["ef"]
        times, found = [], 0
        for i in range(len(queries)):
            t = time.perf_counter()
            _, got = index.search(queries[i:i + 1], 10)
            times.append(time.perf_counter() - t)
            found += len(set(got[0]) & set(truth[i]))
        p50 = sorted(times)[len(times) // 2]
        recall = found / (10 * len(queries))
        what = (f"HNSW search, {size} x {dim} clustered, {figure.get('vectors', 'f32')} vectors, "
                f"ef {figure['ef']} (queries/s, one a call; "
                f"recall@10 {figure['recall']:.4f} vs {recall:.4f}; build {figure['build_s']:.1f} s vs {build:.1f} s)")
        rows.append((what, figure, "FAISS (IndexHNSWFlat)", 1.0 / p50))
    return rows


# --- report ---------------------------------------------------------------------------------

def one_round(args, models, sizes, only, fixed):
    """Every wanted measurement once: for each model and kind, lookalike's figures (from `fixed`,
    the --ours files as (label, figures), when given) and then its peers'. Rows of (measurement,
    our figure, peer, peer's figure), one for each of lookalike's figures."""
    rows = []

    def ours(model, kind):
        return fixed if fixed is not None else [("", run_ours(args, model, kind))]

    def add(mine, what, key, peer, figure):
        """A row for each of lookalike's figure sets against one peer figure."""
        for label, figs in mine:
            rows.append((f"{what}, {label}" if label else what, figure_of(figs, key), peer, figure))

    batches = [1, 16, 64]
    cuda = args.device == "cuda"
    on = " (CUDA)" if cuda else ""
    for name in models:
        print(f"peers: {name}", file=sys.stderr)
        note = weights_note(name)
        if "forward" in only:
            mine = ours(name, "forward")
            peers = {
                f"PyTorch{on}": torch_forward(name, batches, args.seconds, False, args.device),
                f"PyTorch{on} (channels-last)":
                    torch_forward(name, batches, args.seconds, True, args.device),
            }
            if not cuda:
                peers["ONNX Runtime"] = onnx_forward(name, batches, args.seconds, args.threads,
                                                     pathlib.Path(args.out).parent)
            for b in batches:
                key = f"forward/{name}/{b}/folded"
                for peer, figures in peers.items():
                    add(mine, f"{name} embedding, batch {b}{note}", key, peer, figures[b])
        if "train" in only:
            mine = ours(name, "train")
            for peer, cl in [(f"PyTorch{on}", False), (f"PyTorch{on} (channels-last)", True)]:
                add(mine, f"{name} training step, batch 32{note}", f"train/{name}/32", peer,
                    torch_train_step(name, 32, args.seconds, cl, args.device))
        if "folder" in only and weights_file(name):
            mine = ours(name, "folder")
            add(mine, f"{name} folder embedding (decode + resize + forward)", f"folder/{name}",
                "PyTorch + Pillow", torch_folder(name, args.folder))
    if "search" in only and sizes:
        mine = ours(args.models, "search")
        for size in sizes:
            print(f"peers: search {size}", file=sys.stderr)
            for peer, figure in search(size, args.dim, args.seconds, args.threads).items():
                add(mine, f"exact search, {size} x {args.dim}, 100 queries (queries/s)",
                    f"search/{size}x{args.dim}", peer, figure)
    return rows


def figure_of(ours, key):
    return ours.get(key, {}).get("per_second")


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarise(what, peer, mine, theirs):
    """A table row from one measurement's figures, a round each: medians and every ratio."""
    ratios = [m / f for m, f in zip(mine, theirs) if m and f]
    return {"measurement": what, "peer": peer,
            "lookalike": median(mine) if all(mine) else None,
            "peer_figure": median(theirs) if all(theirs) else None,
            "ratio": median(ratios) if ratios else None,
            "ratios": ratios, "lookalike_rounds": mine, "peer_rounds": theirs}


def main():
    ensure_venv()
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    models = [m for m in args.models.split(",") if m]
    sizes = [int(s) for s in args.gallery_sizes.split(",") if s]
    only = set(args.only.split(","))
    fixed = None
    if args.ours:
        fixed = []
        for given in args.ours:
            label, _, path = given.partition("=") if "=" in given else ("", "", given)
            fixed.append((label, {m["key"]: m for m in json.loads(pathlib.Path(path).read_text())}))
    if not only & {"forward", "train", "folder"}:
        models = []  # FAISS and numpy alone: no PyTorch needed
    if models:
        import torch

        torch.set_num_threads(args.threads)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rounds = []
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f"peers: round {r + 1} of {args.rounds}", file=sys.stderr)
        rounds.append(one_round(args, models, sizes, only, fixed))

    table = [summarise(same[0][0], same[0][2], [m for _, m, _, _ in same],
                       [f for _, _, _, f in same]) for same in zip(*rounds)]
    # The HNSW comparison runs lookalike's `ann` binary itself, once.
    for size in [int(s) for s in args.hnsw_sizes.split(",") if s] if "hnsw" in only else []:
        print(f"peers: hnsw {size}", file=sys.stderr)
        for what, figure, peer, peer_figure in hnsw(size, args.dim, args.threads):
            table.append(summarise(what, peer, [figure["per_second"]], [peer_figure]))
    pathlib.Path(args.out).write_text(json.dumps(table, indent=2))
    spread = args.rounds > 1
    header = ["measurement (items/s)", "lookalike", "peer", "peer's", "ratio"]
    if spread:
        header += [f"ratio's range ({args.rounds} rounds)"]
    lines = []
    for t in table:
        line = [t["measurement"], fmt(t["lookalike"]), t["peer"], fmt(t["peer_figure"]),
                "—" if t["ratio"] is None else f"{t['ratio']:.2f}×"]
        if spread:
            line.append(f"{min(t['ratios']):.2f}–{max(t['ratios']):.2f}×" if t["ratios"] else "—")
        lines.append(line)
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    for r in [header] + lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    medians = " (medians over the rounds)" if spread else ""
    print(f"{args.threads} threads for every peer; ratio = lookalike / peer{medians}; "
          f"wrote {args.out}")
    if args.markdown:
        md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(str(c) for c in r) + " |" for r in lines]
        pathlib.Path(args.markdown).write_text("\n".join(md) + "\n")


def fmt(v):
    return "—" if v is None else f"{v:.1f}"


if __name__ == "__main__":
    main()
