"""Datasets (one registry: digits, photos, letters, scrambled, noise, fashion_mnist, cifar10/100, svhn, tinyimagenet,
gtsrb), the one prepare
function `to_model_input`, and the device-resident loader with batched crop/flip (docs/architecture.md#device-data and #registries)."""
from ncood.data.registry import (
    DATASETS, DatasetInfo, DatasetNotFoundError, IDData, RawImages, Split, check_available, get_info, list_datasets,
    load_id, load_ood, register_dataset, stratified_holdout, to_model_input,
)
from ncood.data import builtin, fashion_mnist, tiny_imagenet, torchvision_sets  # noqa: F401,E402  (they fill the registry)
from ncood.data.loader import DeviceLoader, normalized_zero, random_crop_flip

__all__ = [
    "DATASETS", "DatasetInfo", "DatasetNotFoundError", "DeviceLoader", "IDData", "RawImages", "Split", "check_available",
    "get_info", "list_datasets", "load_id", "load_ood", "normalized_zero", "random_crop_flip", "register_dataset",
    "stratified_holdout", "to_model_input",
]
