"""The serving pieces that need no trained model: the ID/OoD threshold (the papers' FPR95 threshold), the choice of
the served run (best condition by mean, its median seed), the response frame, and image decoding (colour modes as
the training data are read, the accepted formats, every bad row named)."""
import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ncood.ood import fpr_at_tpr
from ncood.serve import InputError, ServingLimits, encode_png, threshold_at_tpr
from ncood.serve.decoding import decode_batch, decode_image
from ncood.serve.register import Candidate, choose, metric_mode
from ncood.serve.scorer import OUTPUT_COLUMNS


@pytest.mark.parametrize("n", [1, 19, 20, 21, 144, 1000])
def test_threshold_is_fpr_at_tpr_definition(n):
    g = torch.Generator().manual_seed(n)
    id_s = torch.randn(n, generator=g).round(decimals=1).numpy()  # ties on purpose
    ood_s = (torch.randn(500, generator=g) - 1).numpy()
    t = threshold_at_tpr(id_s)
    assert np.mean(id_s >= t) >= 0.95 and np.mean(id_s > t) < 0.95  # the largest such t
    assert np.mean(ood_s >= t) == fpr_at_tpr(id_s, ood_s, 95)


def test_choose_best_mean_then_median_seed():
    def c(cond, seed, v):
        return Candidate(f"id-{cond}-{seed}", f"{cond}-s{seed}", cond, seed, v)

    runs = [c("a", 0, 0.90), c("a", 1, 0.80), c("a", 2, 0.85), c("a", 3, 0.95),  # mean 0.875, even count
            c("b", 0, 0.99), c("b", 1, 0.70), c("b", 2, 0.80)]  # mean 0.83, the best single seed
    ch = choose(runs, "auroc/gmm/x")
    assert ch.mode == "max" and ch.ranking[0].condition == "a"
    assert (ch.run.seed, ch.rank) == (2, 2)  # sorted 0.80, 0.85, 0.90, 0.95: the lower of the two middle values
    ch = choose(runs, "fpr95/gmm/x")  # lower is better
    assert ch.mode == "min" and ch.ranking[0].condition == "b" and ch.run.seed == 2  # 0.70, 0.80, 0.99
    assert metric_mode("loss/train") == "min" and metric_mode("accuracy/test") == "max"


@pytest.mark.parametrize("from_blocks", [True, False], ids=["blocks", "dict"])
@pytest.mark.parametrize("n", [1, 5])
def test_response_frame_is_pandas_default_frame(n, from_blocks, monkeypatch):
    """response_frame (pandas' block constructor, or the dict one on pandas 2) = pd.DataFrame(cols, columns=...):
    values, column order, dtypes (the class names in the dtype pandas infers), index; and the same JSON records."""
    from ncood.serve import pyfunc
    if not from_blocks:
        monkeypatch.setattr(pyfunc, "create_dataframe_from_blocks", None)
    elif pyfunc.create_dataframe_from_blocks is None:
        pytest.skip("pandas < 3 has no pandas.api.internals.create_dataframe_from_blocks")
    g = np.random.default_rng(n)
    columns = list(OUTPUT_COLUMNS)
    scores = g.standard_normal((len(columns) - 2, n))
    names = np.array(["zero", "1", "two"], dtype=object)
    cols = {**dict(zip(columns, scores)), "predicted_class": names[g.integers(0, 3, n)], "is_ood": scores[0] < 0}
    want = pd.DataFrame(cols, columns=columns)
    got = pyfunc.response_frame(cols, columns, pd.Series(names).dtype)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got.to_json(orient="records") == want.to_json(orient="records")


def _png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_decode_colour_modes_like_training_data():
    limits = ServingLimits()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = decode_image(_png_bytes(rgb), limits)
    assert x.shape == (1, 3, 5, 7) and torch.equal(x, torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    assert torch.equal(decode_image(_png_bytes(grey), limits)[0, 0], torch.from_numpy(grey).float() / 255)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 7, np.uint8)], axis=2)
    assert torch.equal(decode_image(_png_bytes(rgba), limits), x)  # alpha dropped
    deep = (grey.astype(np.uint16) * 257)  # 16-bit grey PNG
    assert torch.allclose(decode_image(_png_bytes(deep), limits)[0, 0], torch.from_numpy(grey).float() / 255)
    assert decode_image(_png_bytes(rgb, fmt="JPEG"), limits).shape == (1, 3, 5, 7)
    with pytest.raises(ValueError, match="not an image"):  # TIFF is not among the accepted formats
        decode_image(_png_bytes(rgb, fmt="TIFF"), limits)
    wrapped = "data:image/png;base64," + "\n".join(encode_png(grey)[i:i + 76] for i in range(0, 200, 76))
    assert decode_batch([wrapped], limits)[0].shape == (1, 1, 5, 7)  # data-URI prefix and line breaks are fine
    with pytest.raises(InputError, match=r"2 of 3 images rejected: row 0: not valid base64.*; row 2: empty"):
        decode_batch(["%%", encode_png(grey), ""], limits)  # every bad row named, good rows do not hide them
