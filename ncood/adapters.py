"""Adapters between ncood's model interface and the rest of the OoD world, both ways.

ncood's evaluation (ncood.evaluate) wants `model(x) -> (logits, z)`, `model.classifier` (nn.Linear) and
`model.classifier_input(z)` (what the classifier multiplies: z / ||z|| for L2 models, normalize(P(z)) with the ICML
2025 ETF projector, z otherwise). Other code wants something else:

(a) `OodNet(model)`: an ncood model for pytorch-ood and OpenOOD style code, which calls `logits = net(x)`:
        net(x)                          -> logits (B, C)
        net.forward_features(x)         -> the classifier's input (B, d'): what feature-based detectors (ViM, KNN,
                                           Mahalanobis, ReAct, ASH) must see. For an L2 model that is z / ||z||, not
                                           z: only then is logits = net.fc(net.forward_features(x)) true.
        net.fc                          -> the classifier (nn.Linear): pytorch-ood's ViM(w=net.fc.weight,
                                           b=net.fc.bias), ReAct/ASH(backbone=net.forward_features, head=net.fc)
        net.forward_raw_features(x)     -> z before any normalization (the TMLR 2024 feature-norm score)
        net(x, return_feature=True)     -> (logits, features), net.get_fc() -> (W, b) numpy, net.get_fc_layer():
                                           OpenOOD's network conventions (openood/networks, its postprocessors)
(b) `as_feature_classifier(net)`: a torchvision or timm classifier for ncood's evaluation:
        timm models (forward_features / forward_head(pre_logits=True) / get_classifier()): used as they are.
        torchvision models: the last nn.Linear in module order is the classifier (resnet `fc`, vgg/alexnet/
        efficientnet/mobilenet `classifier[-1]`, densenet `classifier`, vit `heads.head`); it is moved out of the
        network (replaced IN PLACE by nn.Identity, so the network returns the penultimate features z) and kept as
        `.classifier`. Pass a copy if the original network must stay untouched.
    The wrapper returns (logits, z) with logits = classifier(z), bit for bit the network's own output.

Written by hand: neither pytorch-ood nor OpenOOD nor timm adapts a model to another library's interface; the code
is attribute plumbing (no measurement happens here). examples/adapters.py runs both directions.
"""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["OodNet", "FeatureSplit", "as_feature_classifier"]


class OodNet(nn.Module):
    """An ncood model (FeatureClassifier interface) as a plain classifier: `net(x)` returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        missing = [a for a in ("forward_features", "classifier", "classifier_input") if not hasattr(model, a)]
        if missing:
            raise TypeError(f"OodNet wraps ncood models (ncood.models.create_model); {type(model).__name__} lacks "
                            f"{missing}")
        self.model = model

    @property
    def fc(self) -> nn.Linear:
        return self.model.classifier

    def forward_raw_features(self, x: Tensor) -> Tensor:
        """(B, ...) images -> (B, d) z, before any normalization."""
        return self.model.forward_features(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, ...) images -> (B, d') the classifier's input (z / ||z|| for L2 models)."""
        return self.model.classifier_input(self.model.forward_features(x))

    def forward(self, x: Tensor, return_feature: bool = False):
        """logits (B, C); with return_feature (OpenOOD's convention) (logits, the classifier's input)."""
        features = self.forward_features(x)
        logits = self.fc(features)
        return (logits, features) if return_feature else logits

    def get_fc(self):
        """(W (C, d'), b (C,)) as numpy arrays, as OpenOOD's networks return them."""
        b = self.fc.bias
        return self.fc.weight.detach().cpu().numpy(), None if b is None else b.detach().cpu().numpy()

    def get_fc_layer(self) -> nn.Linear:
        return self.fc


class FeatureSplit(nn.Module):
    """A classifier split into features and a linear head, with ncood's model interface (see the module docstring).

    body: x -> z (B, d); classifier: nn.Linear (C x d). forward(x) -> (logits, z); classifier_input(z) = z.
    """

    def __init__(self, body: nn.Module, classifier: nn.Linear, timm: bool = False) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Linear):
            raise TypeError(f"the classifier head must be an nn.Linear, got {type(classifier).__name__}")
        self.body = body
        self.classifier = classifier
        self.timm = timm  # body is a timm model: z = forward_head(forward_features(x), pre_logits=True)
        self.l2 = False  # the head sees z itself

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, ...) images -> (B, d) the features the head multiplies."""
        if self.timm:
            return self.body.forward_head(self.body.forward_features(x), pre_logits=True).flatten(1)
        return self.body(x).flatten(1)

    def classifier_input(self, z: Tensor) -> Tensor:
        return z

    def forward_head(self, z: Tensor) -> Tensor:
        return self.classifier(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.forward_features(x)
        return self.classifier(z), z


def _last_linear(net: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, the Linear) of the last nn.Linear registered in `net`."""
    found = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise TypeError(f"{type(net).__name__} has no nn.Linear head; wrap the features and the head yourself with "
                        "FeatureSplit(body, classifier)")
    path, linear = found
    parent = net.get_submodule(path.rsplit(".", 1)[0]) if "." in path else net
    return parent, path.rsplit(".", 1)[-1], linear


def as_feature_classifier(net: nn.Module) -> FeatureSplit:
    """A timm or torchvision classifier as an ncood model (evaluate(), the NC metrics, every OoD score).

    timm: z = net.forward_head(net.forward_features(x), pre_logits=True), head = net.get_classifier(), net
    unchanged. torchvision (and any net whose last registered nn.Linear is its final operation): that Linear is
    replaced in place by nn.Identity and becomes the head.
    """
    if isinstance(net, FeatureSplit) or all(hasattr(net, a) for a in ("classifier", "classifier_input")):
        return net  # already has the interface (an ncood model or a split)
    if hasattr(net, "forward_head") and hasattr(net, "get_classifier"):  # timm
        head = net.get_classifier()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"timm model {type(net).__name__} has head {type(head).__name__}, not an nn.Linear "
                            "(num_classes=0?); create it with num_classes > 0")
        return FeatureSplit(net, head, timm=True)
    parent, attr, linear = _last_linear(net)
    setattr(parent, attr, nn.Identity())
    return FeatureSplit(net, linear)
