"""How far bf16-autocast feature extraction moves the OoD numbers, against the fp32 extraction ncood measures with.

    python bench/bf16_extract.py --checkpoint runs/demo/checkpoint.pt --device cuda --json   # a trained trial
    python bench/bf16_extract.py --preset digits --epochs 15 --seed 0                          # train one first
    python bench/bf16_extract.py --smoke --json                 # tests/test_bench.py: 2 epochs, width 4, CPU

Until ncood.evaluate.extract ran in fp32, it ran the eval forward under bf16 autocast on CUDA, so the float64 class
Gaussians, the NC metrics and every score were computed from bf16-rounded features and logits. This script
extracts the same model's features twice, on the same device and images:

    fp32   ncood.evaluate.extract (IEEE fp32: no autocast, no TF32)
    bf16   the same eval-mode forward under torch.autocast(bf16) (the former CUDA path; on CPU, CPU autocast)

then fits the scores on each arm's own train features (ncood.ood.fit_scores: DDU's class Gaussians and every
registered score) and reports, per OoD set and score, AUROC and FPR95 of both arms and their difference, the GMM
jitter each fit needed, the largest relative feature difference, and the test accuracy of both. The checkpoint is a
`checkpoint.pt` of `ncood train` / a trial (it holds its config); without one a trial is trained from --preset.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import torch

from _common import environment, print_json
from ncood.config import TrialConfig, make_config
from ncood import checkpoint
from ncood.evaluate import classifier_inputs, extract
from ncood.ood import Head, ScoreInputs, compute_scores, detection_metrics, fit_scores
from ncood.pipeline import Trial, build_trial


@torch.no_grad()
def extract_bf16(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The former extraction: eval-mode forward under bf16 autocast, outputs cast to fp32 (features, logits)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    feats, logits = [], []
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            for start in range(0, x.shape[0], batch_size):
                lg, z = model(x[start:start + batch_size].to(device))
                feats.append(z.float())
                logits.append(lg.float())
    finally:
        model.train(was)
    return torch.cat(feats), torch.cat(logits)


Extractor = Callable[[torch.nn.Module, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def measure(trial: Trial, extractor: Extractor, batch_size: int = 1024) -> dict[str, Any]:
    """Accuracy, GMM jitter and every score's AUROC / FPR95 per OoD set, with one extractor for every image set."""
    model, data = trial.trainer.model, trial.data
    head = Head.of(model.classifier)

    def inputs(x: torch.Tensor) -> ScoreInputs:  # raw features, logits and the classifier's input, as evaluate()
        f, lg = extractor(model, x, batch_size)
        return ScoreInputs(f, lg, classifier_inputs(model, f))

    train = inputs(data.train.x)
    train_f = train.features
    fit = fit_scores(train, data.train.y.to(train_f.device), num_classes=head.weight.shape[0], head=head)
    test = inputs(data.test.x)
    test_f, test_lg = test.features, test.logits
    id_scores = compute_scores(test, fit)
    out: dict[str, Any] = {
        "accuracy_test": float((test_lg.argmax(1) == data.test.y.to(test_lg.device)).double().mean()),
        "gmm_jitter": fit.gaussians.jitter if "gmm" in fit.state else None,
        "features": {"train": train_f, "test": test_f}, "ood": {}}
    for name, images in trial.ood_sets.items():
        ood_scores = compute_scores(inputs(images), fit)
        out["ood"][name] = {s: detection_metrics(id_scores[s], ood_scores[s]) for s in id_scores}
    return out


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (features of one image set)."""
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def compare(trial: Trial, batch_size: int = 1024) -> dict[str, Any]:
    fp32 = measure(trial, extract, batch_size)
    bf16 = measure(trial, extract_bf16, batch_size)
    rows = []
    for ood, per_score in fp32["ood"].items():
        for score, m in per_score.items():
            b = bf16["ood"][ood][score]
            rows.append({"ood_set": ood, "score": score, "auroc_fp32": m["auroc"], "auroc_bf16": b["auroc"],
                         "auroc_bf16_minus_fp32": b["auroc"] - m["auroc"], "fpr95_fp32": m["fpr95"],
                         "fpr95_bf16": b["fpr95"], "fpr95_bf16_minus_fp32": b["fpr95"] - m["fpr95"]})
    return {
        "condition": trial.cfg.condition, "seed": trial.cfg.seed, "epochs_trained": trial.trainer.epoch,
        "accuracy_test": {"fp32": fp32["accuracy_test"], "bf16": bf16["accuracy_test"]},
        "gmm_jitter": {"fp32": fp32["gmm_jitter"], "bf16": bf16["gmm_jitter"]},
        "feature_max_rel_diff": {k: _rel_diff(fp32["features"][k], bf16["features"][k]) for k in ("train", "test")},
        "rows": rows,
    }


def load_trial(args: argparse.Namespace) -> Trial:
    """The checkpoint's trial (its config, weights) on --device, or a freshly trained one from --preset."""
    if args.checkpoint:
        state = checkpoint.load(args.checkpoint)  # weights_only: a checkpoint cannot run code
        cfg = TrialConfig.from_dict(state["config"]).replace(device=args.device)
        if args.data_root:
            cfg = cfg.replace(data_root=args.data_root)
        trial = build_trial(cfg, progress=False)
        trial.trainer.load_state_dict(state)
        return trial
    overrides = {k: v for k, v in (("epochs", args.epochs), ("width", args.width), ("data_root", args.data_root))
                 if v is not None}
    cfg = make_config(args.preset, seed=args.seed, l2=args.l2, device=args.device, eval_every=0, **overrides)
    trial = build_trial(cfg, progress=not args.json)
    trial.trainer.fit()
    return trial


def table(result: dict[str, Any]) -> str:
    head = f"{'OoD set / score':<28s} {'AUROC fp32':>10s} {'AUROC bf16':>10s} {'diff':>9s} {'FPR95 fp32':>10s} " \
           f"{'FPR95 bf16':>10s} {'diff':>9s}"
    lines = [head]
    for r in result["rows"]:
        lines.append(f"{r['ood_set'] + ' / ' + r['score']:<28s} {r['auroc_fp32']:10.4f} {r['auroc_bf16']:10.4f} "
                     f"{r['auroc_bf16_minus_fp32']:+9.4f} {r['fpr95_fp32']:10.4f} {r['fpr95_bf16']:10.4f} "
                     f"{r['fpr95_bf16_minus_fp32']:+9.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint.pt of a trained trial (else one is trained from --preset)")
    p.add_argument("--preset", default="digits", help="config preset of the trial to train (default digits)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--l2", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (autocast bf16 also runs on CPU)")
    p.add_argument("--batch-size", type=int, default=1024, help="extraction batch size")
    p.add_argument("--json", action="store_true", help="the last stdout line is one JSON object")
    p.add_argument("--smoke", action="store_true", help="tiny: digits, width 4, 2 epochs (tests/test_bench.py)")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.epochs, args.width = "digits", args.epochs or 2, args.width or 4
    trial = load_trial(args)
    result = compare(trial, args.batch_size)
    result["env"] = environment(trial.trainer.device)
    if not args.json:
        print(f"{result['condition']} seed {result['seed']} ({result['epochs_trained']} epochs), "
              f"{result['env'].get('device')}\n")
        print(table(result))
        print(f"\ntest accuracy fp32 {result['accuracy_test']['fp32']:.4f} bf16 {result['accuracy_test']['bf16']:.4f}; "
              f"GMM jitter fp32 {result['gmm_jitter']['fp32']} bf16 {result['gmm_jitter']['bf16']}; largest "
              f"relative feature difference {result['feature_max_rel_diff']}")
    else:
        print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
