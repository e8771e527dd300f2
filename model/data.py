"""Clip dataset for the dual-stream network: K face frames plus a flow clip per item, and batching.

Training samples frames with random offsets and augments both streams consistently (one flip,
one crop window, colour jitter on faces only); evaluation samples deterministically and
never augments. Flow clips of different lengths are zero-padded and masked in `collate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.config import DataConfig
from stages.common import Clip

log = logging.getLogger(__name__)


@dataclass
class ClipArrays:
    """One clip's decoded inputs at the network's sizes."""

    faces: np.ndarray  # uint8 [T, S, S, 3] RGB
    valid: np.ndarray  # bool [T]
    flow: np.ndarray  # float32 [T-1, F, F, 2] in pixels at size F


@dataclass
class Sample:
    faces: Tensor  # float [K, 3, S, S], normalized
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


def load_clip_arrays(faces_path: Path, flow_path: Path, face_size: int, flow_size: int) -> ClipArrays:
    """Read one clip's faces and flow npz files and resize them to the network's input sizes."""
    with np.load(faces_path, allow_pickle=False) as z:
        faces, valid = z["faces"], z["valid"].astype(bool)
    with np.load(flow_path, allow_pickle=False) as z:
        flow = z["flow"].astype(np.float32) * np.float32(z["scale"])
        flow_valid = z["valid"].astype(bool)
    if faces.ndim != 4 or faces.shape[0] < 1 or flow.ndim != 4 or flow.shape[0] < 1:
        raise ValueError(f"bad shapes: faces {faces.shape}, flow {flow.shape}")
    if faces.shape[1] != face_size:
        faces = np.stack([cv2.resize(f, (face_size, face_size), interpolation=cv2.INTER_AREA) for f in faces])
    flow = flow * flow_valid[:, None, None, None]
    if flow.shape[1] != flow_size:
        factor = flow_size / flow.shape[1]
        flow = np.stack([cv2.resize(f, (flow_size, flow_size), interpolation=cv2.INTER_AREA) for f in flow])
        flow = flow * np.float32(factor)
    return ClipArrays(np.ascontiguousarray(faces), valid, flow.astype(np.float32))


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


def hflip(faces: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror both streams; a mirrored motion moves the other way in x."""
    flow = flow.flip(-1).clone()
    flow[:, 0] = -flow[:, 0]
    return faces.flip(-1), flow


def shared_crop(faces: Tensor, flow: Tensor, scale: float, x0: float, y0: float) -> tuple[Tensor, Tensor]:
    """Crop the same relative square window from faces and flow and resize back; flow grows with the zoom."""
    out = []
    for x in (faces, flow):
        side = x.shape[-1]
        crop = max(1, round(scale * side))
        top, left = round(y0 * (side - crop)), round(x0 * (side - crop))
        out.append(TF.resized_crop(x, top, left, crop, crop, [side, side], antialias=True))
    faces_c, flow_c = out
    return faces_c, flow_c * (flow.shape[-1] / max(1, round(scale * flow.shape[-1])))


class ClipDataset(Dataset):
    """Faces and flow of the given clips with their labels; caches decoded clips when cfg.cache."""

    def __init__(
        self,
        root_faces: Path,
        root_flow: Path,
        clips: list[Clip],
        labels: pd.DataFrame | None,
        cfg: DataConfig,
        train: bool,
    ) -> None:
        self.root_faces, self.root_flow = Path(root_faces), Path(root_flow)
        self.clips = list(clips)
        self.cfg = cfg
        self.train = train
        self.targets = self._targets(labels)
        self.cache: dict[str, ClipArrays] = {}
        aug = cfg.augment
        jitter = (aug.brightness, aug.contrast, aug.saturation, aug.hue)
        self.jitter = T.ColorJitter(*jitter) if train and any(jitter) else None
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1)

    def _targets(self, labels: pd.DataFrame | None) -> np.ndarray:
        cols = list(self.cfg.label_columns)
        if labels is None:
            return np.full((len(self.clips), len(cols)), np.nan, np.float32)
        table = labels.drop_duplicates("clip").set_index("clip")
        return table.reindex([c.name for c in self.clips])[cols].to_numpy(np.float32)

    def __len__(self) -> int:
        return len(self.clips)

    def arrays(self, i: int) -> ClipArrays:
        clip = self.clips[i]
        if clip.name in self.cache:
            return self.cache[clip.name]
        arrays = load_clip_arrays(
            clip.path(self.root_faces), clip.path(self.root_flow), self.cfg.static_size, self.cfg.flow_size
        )
        if self.cfg.cache:
            self.cache[clip.name] = arrays
        return arrays

    def preload(self) -> dict[str, str]:
        """Decode every clip now (cached ones are shared with forked workers); drop unreadable clips.

        Returns the dropped clips with their reasons.
        """
        dropped: dict[str, str] = {}
        keep = []
        for i, clip in enumerate(tqdm(self.clips, desc="load clips", unit="clip", mininterval=1.0)):
            try:
                self.arrays(i)
            except Exception as exc:  # noqa: BLE001 - one bad clip must not end the run
                dropped[clip.name] = f"{type(exc).__name__}: {exc}"
                log.warning("dropped %s/%s: %s", clip.split, clip.name, dropped[clip.name])
                continue
            keep.append(i)
        self.clips = [self.clips[i] for i in keep]
        self.targets = self.targets[keep]
        return dropped

    def __getitem__(self, i: int) -> Sample:
        a = self.arrays(i)
        idx = frame_indices(a.valid, self.cfg.static_frames, random=self.train)
        faces = torch.from_numpy(a.faces[idx]).permute(0, 3, 1, 2)  # (K, 3, S, S) uint8
        window = flow_window(a.flow.shape[0], self.cfg.flow_steps, random=self.train)
        flow = torch.from_numpy(a.flow[window]).permute(0, 3, 1, 2)  # (T, 2, F, F)
        if self.train:
            faces, flow = self.augment(faces, flow)
        faces = (faces.float() / 255.0 - self.mean) / self.std
        return Sample(faces, flow.contiguous(), torch.from_numpy(self.targets[i]), self.clips[i].name)

    def augment(self, faces: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        aug = self.cfg.augment
        if aug.crop < 1.0:
            scale = aug.crop + (1.0 - aug.crop) * torch.rand(()).item()
            x0, y0 = torch.rand(2).tolist()
            faces, flow = shared_crop(faces, flow, scale, x0, y0)
        if torch.rand(()).item() < aug.flip:
            faces, flow = hflip(faces, flow)
        if self.jitter is not None:
            faces = self.jitter(faces)  # one set of factors for all K frames
        return faces, flow


def collate(batch: list[Sample]) -> Batch:
    """Stack samples, zero-padding flow clips to the longest and masking the padding."""
    t_max = max(s.flow.shape[0] for s in batch)
    flow = batch[0].flow.new_zeros((len(batch), t_max, *batch[0].flow.shape[1:]))
    mask = torch.zeros(len(batch), t_max, dtype=torch.bool)
    for i, s in enumerate(batch):
        flow[i, : s.flow.shape[0]] = s.flow
        mask[i, : s.flow.shape[0]] = True
    return Batch(
        faces=torch.stack([s.faces for s in batch]),
        flow=flow,
        flow_mask=mask,
        target=torch.stack([s.target for s in batch]),
        clips=[s.clip for s in batch],
    )


def _seed_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(dataset: ClipDataset, batch_size: int, shuffle: bool, workers: int, seed: int) -> DataLoader:
    """A reproducible DataLoader over the dataset with `collate`."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        worker_init_fn=_seed_worker if workers > 0 else None,
        persistent_workers=workers > 0,
    )
