"""Training throughput: ncood's Trainer vs a reference loop written the usual way, same model, optimizer and data.

    ncood      ncood.train.Trainer: the split resident on the device, batched crop/flip there, bf16 autocast (--precision),
               channels_last and fused SGD on CUDA (fp32 + foreach SGD on CPU), one host sync per epoch.
    reference  the pytorch-cifar / DDU loop: a Dataset of uint8 HWC images (as torchvision's CIFAR10 keeps them),
               PIL -> RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor -> Normalize in DataLoader
               worker processes (pinned memory on CUDA), fp32, torch.optim.SGD with its default implementation,
               loss.item() and the correct count read every step.

Both train the same architecture (ncood.models.create_model, seed 0) with SGD lr 0.1, momentum 0.9, weight decay
5e-4 and cross-entropy on the same synthetic CIFAR-shaped set (class-dependent low-frequency patterns plus noise,
uint8 32x32x3, normalized with the CIFAR-10 statistics). After warm-up the two alternate in one process, one
ncood epoch then as many reference images, for `--epochs` rounds; images/s are medians over rounds and
`speedup` (ncood images/s / reference images/s) is the median of the per-round ratios.

On CUDA it also reports model FLOP utilisation: training FLOPs per image counted with
torch.utils.flop_counter.FlopCounterMode (forward + backward), times images/s, over `--peak-tflops` (default
989: H100 SXM dense bf16), for both loops against the same peak; the evaluation overhead at eval_every=10
(ncood.evaluate.evaluate on 45k train + 5k val + 10k test + a 26,032-image OoD set, over ten training epochs);
peak memory per architecture and batch size (the packing table of bench/README.md); and with `--pack 2 4`
the total throughput of 2 and 4 trainer processes sharing the GPU.

    python bench/train.py                          # CPU: width-8 ResNet18, 2,048 images, batch 256
    python bench/train.py --device cuda --json     # ResNet18 + ResNet50 at width 64, batch 1024, 45k images
    python bench/train.py --smoke --json           # tiny sizes (tests/test_bench.py)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from _common import environment, print_json, sync
from ncood import keys
from ncood.config import make_config
from ncood.data import IDData, Split, get_info, to_model_input
from ncood.models import create_model
from ncood.train import Trainer

CONDITIONS = {  # name -> model flags; "plain" is the baseline ResNet, "l2-sn-lg" the seed paper's main condition
    "plain": dict(l2=False, spectral_norm=False, leaky_gap=False),
    "l2-sn-lg": dict(l2=True, spectral_norm=True, leaky_gap=True),
}


# ---- data ---------------------------------------------------------------------------------------------------
def synthetic_images(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 3) uint8 HWC images and (n,) int64 labels: a class's 8x8 colour pattern, upsampled, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    patterns = F.interpolate(torch.rand(classes, 3, 8, 8, generator=g), size=32, mode="bilinear")  # (C, 3, 32, 32)
    x = (patterns[y] * 180 + torch.rand(n, 3, 32, 32, generator=g) * 75).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy()


def to_split(images: np.ndarray, labels: np.ndarray, device: torch.device, chunk: int = 8192) -> Split:
    info = get_info("cifar10")
    xs = [to_model_input(torch.from_numpy(images[i:i + chunk]).to(device).permute(0, 3, 1, 2).float() / 255, info)
          for i in range(0, len(images), chunk)]
    return Split(torch.cat(xs), torch.from_numpy(labels).to(device))


def make_data(n_train: int, n_eval: int, device: torch.device, seed: int = 0):
    """ncood IDData (train n_train, val n_eval // 2, test n_eval) on device, plus the raw train images."""
    info = get_info("cifar10")
    raw = synthetic_images(n_train + n_eval + n_eval // 2, info.num_classes, seed)
    cut = (n_train, n_train + n_eval // 2)
    parts = [(raw[0][a:b], raw[1][a:b]) for a, b in ((0, cut[0]), cut, (cut[1], None))]
    data = IDData(info, *(to_split(x, y, device) for x, y in parts), [str(i) for i in range(info.num_classes)])
    return data, parts[0]


# ---- the two loops -----------------------------------------------------------------------------------------
def build_model(args, arch: str, condition: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(arch, num_classes=10, width=args.width, **CONDITIONS[condition]).to(device)


def bench_precision(args, device: torch.device) -> str:
    """--precision, else bf16 on CUDA (the figures in bench/README.md) and fp32 on CPU (as the reference loop)."""
    return args.precision or ("bf16" if device.type == "cuda" else "fp32")


def ncood_trainer(args, arch: str, condition: str, batch: int, data: IDData, device: torch.device) -> Trainer:
    cfg = make_config("cifar10", arch=arch, width=args.width, batch_size=batch, epochs=1000, eval_every=0,
                      device=str(device), compile=args.compile, precision=bench_precision(args, device), seed=0,
                      **CONDITIONS[condition])
    return Trainer(build_model(args, arch, condition, device), data, cfg, progress=False)


class UsualDataset(torch.utils.data.Dataset):
    """torchvision's CIFAR10 __getitem__: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _forever(loader):
    while True:
        yield from loader


class Reference:
    """The usual loop, advanced `steps` at a time from one persistent DataLoader iterator."""

    def __init__(self, args, arch: str, condition: str, batch: int, raw: tuple, device: torch.device):
        from torchvision import transforms as T

        info = get_info("cifar10")
        transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize(info.mean, info.std)])
        self.loader = torch.utils.data.DataLoader(
            UsualDataset(*raw, transform), batch_size=batch, shuffle=True, num_workers=args.workers,
            pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
            generator=torch.Generator().manual_seed(0))
        self.device, self.workers = device, args.workers
        self.model = build_model(args, arch, condition, device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.it = _forever(self.loader)  # not a method: no reference cycle, so `del` shuts the workers down
        self.train_loss, self.correct, self.total, self.steps_done = 0.0, 0, 0, 0

    def steps(self, k: int) -> tuple[float, int]:
        """Train k steps; returns (seconds, images)."""
        self.model.train()
        sync(self.device)
        t0, seen = time.perf_counter(), 0
        for _ in range(k):
            x, y = next(self.it)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits, _ = self.model(x)
            loss = self.criterion(logits, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.train_loss += loss.item()  # the usual per-step bookkeeping (a host sync each step)
            self.correct += logits.argmax(1).eq(y).sum().item()
            self.total += y.numel()
            seen += y.numel()
        sync(self.device)
        self.steps_done += k
        return time.perf_counter() - t0, seen

    @property
    def prefetched(self) -> int:
        """Batches the idle workers have ready when a round starts (DataLoader's default prefetch_factor 2)."""
        return 2 * self.workers


def agreement(trainer: Trainer, ref: Reference, data: IDData, raw: tuple, k: int = 64) -> dict:
    """Do both loops start from the same weights and see the same pixels? (before any training step)

    same_init: every parameter and buffer equal. input_max_abs_diff: ncood's resident normalized images vs the
    reference's ToTensor + Normalize of the same uint8 images (its transform without the random crop/flip).
    """
    a, b = trainer.model.state_dict(), ref.model.state_dict()
    same = a.keys() == b.keys() and all(torch.equal(a[n].to(b[n].device), b[n]) for n in a)
    from torchvision import transforms as T

    info = get_info("cifar10")
    plain = T.Compose([T.ToTensor(), T.Normalize(info.mean, info.std)])
    theirs = torch.stack([plain(img) for img in raw[0][:k]])  # (k, 3, 32, 32)
    diff = float((data.train.x[:k].cpu() - theirs).abs().max())
    return {"same_init": same, "input_max_abs_diff": diff}


def interleaved(args, trainer: Trainer, ref: Reference | None) -> dict:
    """Warm up both, then `args.epochs` rounds of [one ncood epoch, one epoch's worth of reference steps].

    Alternating puts both under the same machine load (a shared CPU drifts a lot); each round gives a ratio and
    the reported speedup is their median. Before a timed reference round the batches its workers prefetched
    while ncood ran are consumed untimed, so neither loop gets work done for free.
    """
    t0 = time.perf_counter()
    for e in range(args.warmup_epochs):
        trainer.train_epoch(e + 1)
    warmup = {"ncood_s": time.perf_counter() - t0}
    if ref is not None:
        warmup["reference_s"] = ref.steps(args.warmup_steps)[0]
    n = len(trainer.data.train)
    ours, theirs, ratios, loss = [], [], [], None
    for r in range(args.epochs):
        row = trainer.train_epoch(args.warmup_epochs + r + 1)
        ours.append(n / row[keys.EPOCH_TIME])
        loss = row[keys.LOSS_TRAIN]
        if ref is not None:
            ref.steps(ref.prefetched)
            t, seen = ref.steps(args.steps)
            theirs.append(seen / t)
            ratios.append(ours[-1] / theirs[-1])
    med = statistics.median
    out = {"ncood": {"img_s": med(ours), "best_img_s": max(ours), "rounds_img_s": ours, "epoch_s": n / med(ours),
                     "images_per_epoch": n, "warmup_s": warmup["ncood_s"], "loss": loss}}
    if ref is not None:
        out["reference"] = {"img_s": med(theirs), "best_img_s": max(theirs), "rounds_img_s": theirs,
                            "steps_per_round": args.steps, "workers": args.workers,
                            "warmup_s": warmup["reference_s"], "loss": ref.train_loss / ref.steps_done}
        out["speedup"] = med(ratios)
        out["speedup_best"] = max(ours) / max(theirs)
    return out


def train_flops_per_image(args, arch: str, condition: str, batch: int) -> float:
    """Forward + backward FLOPs per training image at `batch` (FlopCounterMode on the CPU).

    Counted at batch 2 and 4: the difference is the per-image part; what is left is per step (the spectral-norm
    power iteration runs once per step whatever the batch) and is spread over `batch` images.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def count(b: int) -> int:
        model = build_model(args, arch, condition, torch.device("cpu"))
        x, y = torch.randn(b, 3, 32, 32), torch.arange(b) % 10
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(x)[0], y).backward()
        return counter.get_total_flops()

    f2, f4 = count(2), count(4)
    per_image = (f4 - f2) / 2
    return per_image + (f2 - 2 * per_image) / batch


# ---- GPU extras: evaluation overhead, memory, packing ----------------------------------------------------------
def eval_overhead(trainer: Trainer, data: IDData, ood: dict, epoch_s: float, repeats: int = 2) -> dict:
    """Seconds of one ncood.evaluate.evaluate (best of `repeats`) against one training epoch."""
    from ncood.evaluate import evaluate

    device = data.train.x.device
    times = []
    for _ in range(repeats):  # the first includes cuDNN/cuSOLVER warm-up; a 60-epoch trial evaluates 6 times
        sync(device)
        t0 = time.perf_counter()
        results, _ = evaluate(trainer.model, data, ood, l2=trainer.cfg.l2, batch_size=1024)
        sync(device)
        times.append(time.perf_counter() - t0)
    eval_s = min(times)
    return {"eval_s": eval_s, "all_s": times, "epoch_s": epoch_s, "eval_over_epoch": eval_s / epoch_s,
            "overhead_at_eval_every_10": eval_s / (10 * epoch_s), "gmm_jitter": results.get(keys.GMM_JITTER),
            "images": {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                       "ood": sum(len(x) for x in ood.values())}}


def memory_table(args, arch: str, condition: str, data: IDData, ood: dict) -> dict:
    """Peak CUDA memory of an ncood trial (resident data + one training epoch [+ evaluation]) per batch size."""
    from ncood.evaluate import evaluate

    table = {}
    for b in [args.batch_size, *args.memory_batches]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        trainer = ncood_trainer(args, arch, condition, b, data, data.train.x.device)
        trainer.train_epoch(1)
        row = {"train_alloc_gib": gib(torch.cuda.max_memory_allocated()),
               "train_reserved_gib": gib(torch.cuda.max_memory_reserved())}
        if ood:  # the pipeline evaluates at batch max(batch, 1024)
            torch.cuda.reset_peak_memory_stats()
            evaluate(trainer.model, data, ood, l2=trainer.cfg.l2, batch_size=max(b, 1024))
            row.update(eval_alloc_gib=gib(torch.cuda.max_memory_allocated()),
                       eval_reserved_gib=gib(torch.cuda.max_memory_reserved()))
        table[str(b)] = row
        del trainer
    return table


def gib(b: float) -> float:
    return round(b / 2**30, 3)


def pack_worker(rank: int, args: SimpleNamespace, barrier, queue) -> None:
    device = torch.device("cuda")
    data, _ = make_data(args.n_train, args.n_eval, device)
    cfg = make_config("cifar10", arch=args.pack_arch, width=args.width, batch_size=args.batch_size, epochs=1000,
                      eval_every=0, device="cuda", compile=args.compile, precision=bench_precision(args, device),
                      seed=rank)
    trainer = Trainer(build_model(args, args.pack_arch, "plain", device), data, cfg, progress=False)
    for e in range(args.warmup_epochs):
        trainer.train_epoch(e + 1)
    barrier.wait(timeout=args.pack_timeout)
    t0 = time.perf_counter()
    for e in range(args.epochs):
        trainer.train_epoch(args.warmup_epochs + e + 1)
    queue.put((rank, time.perf_counter() - t0, torch.cuda.max_memory_reserved()))


def packing(args, procs: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=pack_worker, args=(r, SimpleNamespace(**vars(args)), barrier, queue))
               for r in range(procs)]
    for w in workers:
        w.start()
    try:
        done = [queue.get(timeout=args.pack_timeout) for _ in workers]
    except Exception as e:  # a worker died (its traceback is on stderr) or hung: report and go on
        for w in workers:
            w.terminate()
        return {"procs": procs, "error": f"{type(e).__name__}: no result within {args.pack_timeout} s"}
    for w in workers:
        w.join()
    wall = max(t for _, t, _ in done)
    images = procs * args.epochs * args.n_train
    return {"procs": procs, "arch": args.pack_arch, "batch": args.batch_size, "total_img_s": images / wall,
            "per_proc_img_s": [args.epochs * args.n_train / t for _, t, _ in sorted(done)],
            "reserved_gib_per_proc": [gib(m) for _, _, m in sorted(done)]}


# ---- main -----------------------------------------------------------------------------------------------------
def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--archs", nargs="+", default=None, help="default: resnet18 (CPU), resnet18 resnet50 (CUDA)")
    p.add_argument("--conditions", nargs="+", default=["plain"], choices=sorted(CONDITIONS))
    p.add_argument("--width", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on CPU, 1024 on CUDA")
    p.add_argument("--n-train", type=int, default=None, help="training images; default: 2048 (CPU), 45000 (CUDA)")
    p.add_argument("--n-eval", type=int, default=10_000, help="test images (val gets half) for the evaluation")
    p.add_argument("--n-ood", type=int, default=26_032, help="OoD images for the evaluation (SVHN test size)")
    p.add_argument("--epochs", type=int, default=3,
                   help="timed rounds: one ncood epoch, then one epoch's worth of reference steps (medians reported)")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="timed reference steps; default: one epoch's worth")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers; default 2 (CPU), 8 (CUDA)")
    p.add_argument("--compile", action="store_true", help="ncood trainer with torch.compile (cfg.compile)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="ncood trainer precision (cfg.precision; default bf16 on CUDA, what bench/README.md measured, "
                        "fp32 on CPU; fp32 is the TrialConfig default, the papers state no precision)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--no-reference", action="store_true", help="time the ncood trainer only")
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the evaluation overhead (default: on for CUDA)")
    p.add_argument("--memory-batches", type=int, nargs="*", default=None,
                   help="extra batch sizes for the peak-memory table (CUDA; default 512)")
    p.add_argument("--pack", type=int, nargs="*", default=[], help="process counts sharing the GPU, e.g. 2 4")
    p.add_argument("--pack-arch", default="resnet18")
    p.add_argument("--pack-timeout", type=float, default=300.0, help="seconds to wait for the packed processes")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="for MFU: H100 SXM dense bf16 = 989")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for tests (CPU, seconds)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    if args.smoke:
        args.width, args.batch_size, args.n_train, args.n_eval, args.n_ood = 4, 32, 128, 64, 64
        args.epochs, args.warmup_epochs, args.steps, args.warmup_steps, args.workers = 1, 1, 4, 1, 0
        args.eval = True if args.eval is None else args.eval
    args.archs = args.archs or (["resnet18", "resnet50"] if cuda else ["resnet18"])
    args.width = args.width or (64 if cuda else 8)
    args.batch_size = args.batch_size or (1024 if cuda else 256)
    args.n_train = args.n_train or (45_000 if cuda else 2048)
    args.steps = args.steps or max(1, args.n_train // args.batch_size)
    args.workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 2)
    args.eval = cuda if args.eval is None else args.eval
    args.memory_batches = [512] if args.memory_batches is None and cuda else (args.memory_batches or [])
    return args, device


def main(argv: list[str] | None = None) -> dict:
    args, device = parse(argv)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    out = {"benchmark": "train", "env": environment(device), "peak_tflops": args.peak_tflops if cuda else None,
           "settings": {k: v for k, v in vars(args).items() if k not in ("json",)}, "runs": []}
    print(f"# {out['env']}", flush=True)
    data, raw = make_data(args.n_train, args.n_eval, device)
    ood = {"ood": to_split(*synthetic_images(args.n_ood, 10, seed=7), device).x} if args.eval else {}
    for arch in args.archs:
        for condition in args.conditions:
            row = {"arch": arch, "condition": condition, "width": args.width, "batch": args.batch_size,
                   "flops_per_image": train_flops_per_image(args, arch, condition, args.batch_size)}
            ref = None if args.no_reference else Reference(args, arch, condition, args.batch_size, raw, device)
            trainer = ncood_trainer(args, arch, condition, args.batch_size, data, device)
            if ref is not None:
                row["agreement"] = agreement(trainer, ref, data, raw)
            row.update(interleaved(args, trainer, ref))
            del ref
            if cuda:
                for who in ("ncood", "reference"):
                    if who in row:
                        row[who]["mfu"] = row[who]["img_s"] * row["flops_per_image"] / (args.peak_tflops * 1e12)
            if args.eval:
                try:
                    row["eval"] = eval_overhead(trainer, data, ood, row["ncood"]["epoch_s"])
                except Exception as e:  # e.g. GaussianFitError on degenerate features: report, keep benchmarking
                    row["eval"] = {"error": f"{type(e).__name__}: {e}"}
            del trainer
            if cuda:
                row["memory"] = memory_table(args, arch, condition, data, ood)
            out["runs"].append(row)
            report(row, cuda)
    if args.pack and cuda:
        del data
        torch.cuda.empty_cache()
        out["packing"] = [packing(args, k) for k in args.pack]
        for r in out["packing"]:
            if "error" in r:
                print(f"packing {r['procs']}: {r['error']}", flush=True)
                continue
            print(f"packing {r['procs']} x {r['arch']} b{r['batch']}: total {r['total_img_s']:,.0f} img/s "
                  f"(per process {', '.join(f'{v:,.0f}' for v in r['per_proc_img_s'])})", flush=True)
    if args.json:
        print_json(out)
    return out


def report(row: dict, cuda: bool) -> None:
    o = row["ncood"]
    line = f"{row['arch']} {row['condition']} w{row['width']} b{row['batch']}: ncood {o['img_s']:,.0f} img/s"
    if "reference" in row:
        line += f", reference {row['reference']['img_s']:,.0f} img/s, speedup {row['speedup']:.2f}x"
    line += f"; {row['flops_per_image'] / 1e9:.3f} GFLOP/img"
    if cuda:
        line += f"; MFU ncood {o['mfu']:.1%}" + (f", reference {row['reference']['mfu']:.1%}" if "reference" in row else "")
    if "eval" in row and "error" in row["eval"]:
        line += f"; eval failed: {row['eval']['error']}"
    elif "eval" in row:
        e = row["eval"]
        line += f"; eval {e['eval_s']:.2f} s = {e['eval_over_epoch']:.2f} epochs ({e['overhead_at_eval_every_10']:.1%} at every 10)"
    if "memory" in row:
        line += "; peak train " + ", ".join(f"b{b}: {m['train_alloc_gib']} GiB" for b, m in row["memory"].items())
    print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
