"""The names the network and the pipeline share: the traits, the splits and a clip's record.

The pipeline imports these from here (model/ imports nothing from stages/), so the trait order
O, C, E, A, N is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
LABEL_COLUMNS = (*TRAITS, "interview")
SPLITS = ("train", "val", "test")


def video_id(clip: str) -> str:
    """The source video a FI V2 clip was cut from: its name before the clip number (`<YouTube id>.<nnn>`);
    a name without a clip number is its own video."""
    stem = clip.removesuffix(".mp4")
    head, dot, number = stem.rpartition(".")
    return head if dot and number.isdigit() else stem


@dataclass(frozen=True)
class Clip:
    """One clip of the dataset: its official name (without .mp4) and split."""

    name: str
    split: str

    def path(self, root: str | Path, suffix: str = ".npz") -> Path:
        return Path(root) / self.split / f"{self.name}{suffix}"


@dataclass(frozen=True)
class ClipSource:
    """Where one clip's network inputs lie: its aligned-faces file and its flow file."""

    clip: Clip
    faces: Path
    flow: Path

    @classmethod
    def under(cls, clip: Clip, faces_root: str | Path, flow_root: str | Path) -> ClipSource:
        """The files of a clip in the unsharded layout <root>/<split>/<clip>.npz."""
        return cls(clip, clip.path(faces_root), clip.path(flow_root))
