"""ncood models in pytorch-ood, and a torchvision classifier in ncood's evaluation (ncood/adapters.py), on digits.

    python examples/adapters.py            # ~1 minute on 2 CPU cores; tests/test_adapters.py runs it with --quick

1. Train a width-8 L2 ResNet18 on the built-in digits (ncood's own trial), wrap it with ncood.adapters.OodNet and
   give it to pytorch-ood's detectors exactly as their documentation does (EnergyBased(net), ViM(net.forward_features,
   w=net.fc.weight, b=net.fc.bias), KNN(net.forward_features)). Their AUROCs equal ncood's own scores: the adapter
   hands them the classifier's input z / ||z||, the features ncood's detectors read for an L2 model.
2. Wrap a torchvision ResNet18 (its `fc` becomes the head) with ncood.adapters.as_feature_classifier, train it
   briefly, and run ncood.evaluate on it: NC metrics and every registered OoD score for each OoD set.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import torch
from pytorch_ood.detector import KNN, EnergyBased, ViM
from torch.utils.data import DataLoader, TensorDataset

from ncood import keys
from ncood.adapters import OodNet, as_feature_classifier
from ncood.config import make_config
from ncood.data import get_info, load_id, load_ood
from ncood.evaluate import evaluate, format_results
from ncood.ood import detection_metrics
from ncood.pipeline import build_trial


def pytorch_ood_on_an_ncood_model(epochs: int, data_root: str) -> dict[str, tuple[float, float]]:
    """{score: (pytorch-ood AUROC, ncood AUROC)} on the `photos` OoD set."""
    cfg = make_config("digits", width=8, epochs=epochs, l2=True, eval_every=0, device="cpu", data_root=data_root,
                      ood_sets=("photos",))
    trial = build_trial(cfg, progress=False)
    trial.trainer.fit()  # evaluates once, after the last epoch (eval_every=0)
    ours = trial.trainer.history[-1]

    net = OodNet(trial.trainer.model).eval()
    train = DataLoader(TensorDataset(trial.data.train.x, trial.data.train.y), batch_size=256)
    detectors = {
        "energy": EnergyBased(net),
        "vim": ViM(net.forward_features, d=net.fc.in_features // 2, w=net.fc.weight, b=net.fc.bias).fit(train),
        "knn": KNN(net.forward_features, k=50).fit(train),
    }
    out = {}
    with torch.no_grad():
        for name, det in detectors.items():
            # pytorch-ood scores outliers high; ncood scores ID high
            id_s, ood_s = -det.predict(trial.data.test.x), -det.predict(trial.ood_sets["photos"])
            out[name] = (detection_metrics(id_s, ood_s)["auroc"], ours[keys.ood_key("photos", name, "auroc")])
    return out


def ncood_on_a_torchvision_model(epochs: int, data_root: str) -> dict[str, float]:
    """ncood's full evaluation of a torchvision ResNet18 (its own stem, with one input channel for the grey digits)."""
    from torchvision.models import resnet18

    data = load_id("digits", data_root)
    ood_sets = {name: load_ood(name, data_root, like=data) for name in get_info("digits").default_ood}
    torch.manual_seed(0)
    net = resnet18(num_classes=data.info.num_classes)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # grey digits
    model = as_feature_classifier(net)  # net.fc -> model.classifier, net.fc replaced by Identity
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=128, shuffle=True)
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x)[0], y).backward()
            opt.step()
    results, _ = evaluate(model, data, ood_sets, batch_size=512)
    print(format_results(results))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (the test's setting)")
    parser.add_argument("--data-root", default=None, help="ncood data root (default: a temporary folder)")
    args = parser.parse_args(argv)
    epochs = (2, 1) if args.quick else (15, 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or tmp
        aurocs = pytorch_ood_on_an_ncood_model(epochs[0], root)
        print(f"{'score':<8s} {'pytorch-ood AUROC':>18s} {'ncood AUROC':>12s}   (digits vs photos, L2 ResNet18)")
        for name, (theirs, ours) in aurocs.items():
            print(f"{name:<8s} {theirs:18.6f} {ours:12.6f}")
        results = ncood_on_a_torchvision_model(epochs[1], root)
    return {"aurocs": aurocs, "torchvision": results}


if __name__ == "__main__":
    main(sys.argv[1:])
