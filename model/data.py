"""Clip dataset for the dual-stream network: K face frames plus a flow clip per item, and batching.

Training samples frames with random offsets and augments both streams consistently in `collate`
(one flip, one crop window per clip; colour jitter on faces only), batched for speed; evaluation
samples deterministically and never augments. Flow clips of different lengths are zero-padded and masked in `collate`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from model.config import AugmentConfig, DataConfig
from model.records import Clip, ClipSource

if TYPE_CHECKING:
    import pandas as pd  # the labels a dataset is given; predict never loads pandas

log = logging.getLogger(__name__)


@dataclass
class ClipArrays:
    """One clip's decoded inputs at the network's sizes."""

    faces: np.ndarray  # uint8 [T, S, S, 3] RGB
    valid: np.ndarray  # bool [T]
    flow: np.ndarray  # float32 [T-1, F, F, 2] in pixels at size F


@dataclass
class Sample:
    faces: Tensor  # uint8 [K, 3, S, S]
    flow: Tensor  # float [T, 2, F, F], pixels
    target: Tensor  # float [n_outputs] (NaN when unlabelled)
    clip: str


@dataclass
class Batch:
    faces: Tensor  # float [B, K, 3, S, S]
    flow: Tensor  # float [B, T, 2, F, F], zero-padded
    flow_mask: Tensor  # bool [B, T], True = real step
    target: Tensor  # float [B, n_outputs]
    clips: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.faces.to(device, non_blocking=non_blocking),
            self.flow.to(device, non_blocking=non_blocking),
            self.flow_mask.to(device, non_blocking=non_blocking),
            self.target.to(device, non_blocking=non_blocking),
            self.clips,
        )

    def __len__(self) -> int:
        return len(self.clips)


def clip_arrays(
    faces: np.ndarray,
    valid: np.ndarray,
    flow: np.ndarray,
    flow_scale: float,
    flow_valid: np.ndarray,
    face_size: int,
    flow_size: int,
) -> ClipArrays:
    """One clip's stored arrays (uint8 faces, int8 flow with its scale) at the network's input sizes."""
    flow = flow.astype(np.float32) * np.float32(flow_scale)
    if faces.ndim != 4 or faces.shape[0] < 1 or flow.ndim != 4 or flow.shape[0] < 1:
        raise ValueError(f"bad shapes: faces {faces.shape}, flow {flow.shape}")
    if faces.shape[1] != face_size:
        faces = np.stack([cv2.resize(f, (face_size, face_size), interpolation=cv2.INTER_AREA) for f in faces])
    flow = flow * flow_valid.astype(bool)[:, None, None, None]
    if flow.shape[1] != flow_size:
        factor = flow_size / flow.shape[1]
        flow = np.stack([cv2.resize(f, (flow_size, flow_size), interpolation=cv2.INTER_AREA) for f in flow])
        flow = flow * np.float32(factor)
    return ClipArrays(np.ascontiguousarray(faces), valid.astype(bool), flow.astype(np.float32))


def load_clip_arrays(faces_path: Path, flow_path: Path, face_size: int, flow_size: int) -> ClipArrays:
    """Read one clip's faces and flow npz files and bring them to the network's input sizes."""
    with np.load(faces_path, allow_pickle=False) as z:
        faces, valid = z["faces"], z["valid"]
    with np.load(flow_path, allow_pickle=False) as z:
        flow, scale, flow_valid = z["flow"], z["scale"], z["valid"]
    return clip_arrays(faces, valid, flow, scale, flow_valid, face_size, flow_size)


def make_sample(arrays: ClipArrays, cfg: DataConfig, train: bool, target: np.ndarray, name: str) -> Sample:
    """What the network sees of one clip: K face frames and a flow window, sampled at random for
    training and deterministically otherwise. The dataset and predict both build items here."""
    idx = frame_indices(arrays.valid, cfg.static_frames, random=train)
    faces = torch.from_numpy(arrays.faces[idx]).permute(0, 3, 1, 2)  # (K, 3, S, S) uint8
    window = flow_window(arrays.flow.shape[0], cfg.flow_steps, random=train)
    flow = torch.from_numpy(arrays.flow[window]).permute(0, 3, 1, 2)  # (T, 2, F, F)
    return Sample(faces, flow.contiguous(), torch.as_tensor(target, dtype=torch.float32), name)


def frame_indices(valid: np.ndarray, k: int, random: bool) -> np.ndarray:
    """K indices spread uniformly over the valid frames: one per equal segment, random or centred."""
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        idx = np.arange(valid.size)
    edges = np.linspace(0, idx.size, k + 1)
    if random:
        pos = edges[:-1] + torch.rand(k).numpy() * (edges[1:] - edges[:-1])
    else:
        pos = (edges[:-1] + edges[1:]) / 2
    return idx[np.clip(pos.astype(int), 0, idx.size - 1)]


def flow_window(steps: int, length: int, random: bool) -> slice:
    """A contiguous window of `length` flow steps (all when length is 0 or longer than the clip)."""
    if length <= 0 or steps <= length:
        return slice(0, steps)
    start = int(torch.randint(0, steps - length + 1, ()).item()) if random else (steps - length) // 2
    return slice(start, start + length)


def augment_batch(
    faces: Tensor, flow: Tensor, flow_mask: Tensor, aug: AugmentConfig
) -> tuple[Tensor, Tensor]:
    """Random time reversal, flip, crop and colour jitter per clip, the same on faces and flow.

    faces float [B, K, 3, S, S] in [0, 1]; flow [B, T, 2, F, F] in pixels. A reversed clip plays
    backwards: its face frames in reverse order, its valid flow steps too, each negated (the
    motion from frame t+1 back to t). One affine grid per clip does the crop (a square window of
    relative side s, resized back) and the mirror; the flow is zoomed by 1/s with it and its x
    component negated where mirrored.
    """
    bsz = faces.shape[0]
    if aug.reverse > 0:
        faces, flow = faces.clone(), flow.clone()
        lengths = flow_mask.sum(1).tolist()
        for i in torch.nonzero(torch.rand(bsz) < aug.reverse).flatten().tolist():
            faces[i] = faces[i].flip(0)
            flow[i, : lengths[i]] = -flow[i, : lengths[i]].flip(0)
    side = aug.crop + (1.0 - aug.crop) * torch.rand(bsz) if aug.crop < 1.0 else torch.ones(bsz)
    centre = (1.0 - side)[:, None] * (2.0 * torch.rand(bsz, 2) - 1.0)  # window stays inside the image
    sign = torch.where(torch.rand(bsz) < aug.flip, -1.0, 1.0)
    theta = torch.zeros(bsz, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * sign, side
    theta[:, :, 2] = centre
    if (side < 1).any() or (sign < 0).any():
        faces = _warp(faces, theta)
        flow = _warp(flow, theta) / side[:, None, None, None, None]
        flow[:, :, 0] *= sign[:, None, None, None]
        flow = flow * flow_mask[:, :, None, None, None]
    jitter = torch.tensor([aug.brightness, aug.contrast, aug.saturation])
    if jitter.any():  # one factor per clip for all its frames, as ColorJitter on one image
        b, c, s = (1.0 + jitter * (2.0 * torch.rand(bsz, 3) - 1.0)).view(bsz, 3, 1, 1, 1, 1).unbind(1)
        faces = (faces * b).clamp(0, 1)
        mean = _gray(faces).mean((1, 2, 3, 4), keepdim=True)
        faces = ((faces - mean) * c + mean).clamp(0, 1)
        gray = _gray(faces)
        faces = (gray + (faces - gray) * s).clamp(0, 1)
    return faces, flow


def _gray(faces: Tensor) -> Tensor:
    return TF.rgb_to_grayscale(faces.flatten(0, 1)).view(*faces.shape[:2], 1, *faces.shape[-2:])


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Resample [B, N, C, H, W] with one affine grid per clip shared by its N frames."""
    theta = theta.repeat_interleave(x.shape[1], dim=0)
    flat = x.flatten(0, 1)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    return F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False).view_as(x)


class ClipDataset(Dataset):
    """Faces and flow of the given clips with their labels; caches decoded clips when cfg.cache."""

    def __init__(
        self, sources: list[ClipSource], labels: pd.DataFrame | None, cfg: DataConfig, train: bool
    ) -> None:
        self.sources = list(sources)
        self.cfg = cfg
        self.train = train
        self.targets = self._targets(labels)
        self.cache: dict[str, ClipArrays] = {}

    @property
    def clips(self) -> list[Clip]:
        return [s.clip for s in self.sources]

    def _targets(self, labels: pd.DataFrame | None) -> np.ndarray:
        cols = list(self.cfg.label_columns)
        if labels is None:
            return np.full((len(self.sources), len(cols)), np.nan, np.float32)
        table = labels.drop_duplicates("clip").set_index("clip")
        return table.reindex([s.clip.name for s in self.sources])[cols].to_numpy(np.float32)

    def __len__(self) -> int:
        return len(self.sources)

    def arrays(self, i: int) -> ClipArrays:
        source = self.sources[i]
        name = source.clip.name
        if name in self.cache:
            return self.cache[name]
        arrays = load_clip_arrays(source.faces, source.flow, self.cfg.static_size, self.cfg.flow_size)
        if self.cfg.cache:
            self.cache[name] = arrays
        return arrays

    def preload(self) -> dict[str, str]:
        """Decode every clip now (cached, when cfg.cache, and shared with forked workers); drop unreadable ones.

        Returns the dropped clips with their reasons.
        """

        def load(i: int) -> Exception | None:
            try:
                self.arrays(i)
            except Exception as exc:  # noqa: BLE001 - one bad clip must not end the run
                return exc
            return None

        dropped: dict[str, str] = {}
        keep = []
        # Two threads: reading and resizing release the GIL, and a clip's arrays are its own.
        with ThreadPoolExecutor(2) as pool:
            errors = pool.map(load, range(len(self.sources)))
            for i, exc in enumerate(
                tqdm(errors, total=len(self.sources), desc="load clips", unit="clip", mininterval=1.0)
            ):
                if exc is None:
                    keep.append(i)
                    continue
                clip = self.sources[i].clip
                dropped[clip.name] = f"{type(exc).__name__}: {exc}"
                log.warning("dropped %s/%s: %s", clip.split, clip.name, dropped[clip.name])
        self.sources = [self.sources[i] for i in keep]
        self.targets = self.targets[keep]
        return dropped

    def subset(self, names: list[str]) -> ClipDataset:
        """A dataset over some of this one's clips, in the given order, sharing its decoded arrays."""
        index = {s.clip.name: i for i, s in enumerate(self.sources)}
        part = ClipDataset([self.sources[index[n]] for n in names], None, self.cfg, self.train)
        part.targets = self.targets[[index[n] for n in names]] if names else part.targets
        part.cache = {n: self.cache[n] for n in names if n in self.cache}
        return part

    def __getitem__(self, i: int) -> Sample:
        return make_sample(self.arrays(i), self.cfg, self.train, self.targets[i], self.sources[i].clip.name)


def collate(batch: list[Sample], cfg: DataConfig | None = None, train: bool = False) -> Batch:
    """Stack samples, zero-padding flow clips to the longest and masking the padding.

    Faces are scaled to [0, 1], augmented with `cfg.augment` when `train`, then normalized
    with cfg.mean/std (DataConfig defaults when cfg is None).
    """
    cfg = cfg or DataConfig()
    t_max = max(s.flow.shape[0] for s in batch)
    flow = batch[0].flow.new_zeros((len(batch), t_max, *batch[0].flow.shape[1:]))
    mask = torch.zeros(len(batch), t_max, dtype=torch.bool)
    for i, s in enumerate(batch):
        flow[i, : s.flow.shape[0]] = s.flow
        mask[i, : s.flow.shape[0]] = True
    faces = torch.stack([s.faces for s in batch]).float() / 255.0  # (B, K, 3, S, S)
    if train:
        faces, flow = augment_batch(faces, flow, mask, cfg.augment)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    return Batch(
        faces=(faces - mean) / std,
        flow=flow,
        flow_mask=mask,
        target=torch.stack([s.target for s in batch]),
        clips=[s.clip for s in batch],
    )


def _seed_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(
    dataset: ClipDataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A reproducible DataLoader over the dataset with `collate`.

    With num_replicas > 1 (DDP) it reads only this rank's shard through a DistributedSampler;
    call `loader.sampler.set_epoch(epoch)` each epoch for a new shuffle.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if num_replicas > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=partial(collate, cfg=dataset.cfg, train=dataset.train),
        generator=generator,
        worker_init_fn=_seed_worker if workers > 0 else None,
        persistent_workers=workers > 0,
    )
