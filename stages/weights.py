"""Save torchvision's published pretrained weights as local state dicts, once, on a machine with internet.

python -m stages.weights                                  # resnet50 (ImageNet) and r2plus1d_18 (Kinetics-400)
python -m stages.weights --static resnet18 --dynamic r3d_18 --out-dir data/weights

The static file is the ImageNet ResNet as published (torchvision's DEFAULT weights). The dynamic
file is the Kinetics-400 video ResNet with its RGB stem turned into the 2-channel flow stem: the
first conv's filters averaged over the colour channels and repeated for flow x and y
(cross-modality initialisation, Wang et al., Temporal Segment Networks, ECCV 2016). Both leave
out the classifier head (fc.*): the network has its own. The files are named
<model>_<weights>.pt and <model>_<weights>_flow.pt; point model.static.pretrained and
model.dynamic.pretrained at them (configs/full.yaml does). This is not a DVC stage: it needs the
internet, and the published weights do not change.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from model.atomic import atomic_path
from model.config import DYNAMIC_BACKBONES, STATIC_BACKBONES
from stages import cli

DYNAMIC_PRETRAINED = tuple(b for b in DYNAMIC_BACKBONES if b != "light3d")  # light3d has no published weights
HEAD = "fc."  # the classifier of torchvision's ResNets and video ResNets

READS = "torchvision's published weights, downloaded once into torch's hub cache (needs the internet)"
WRITES = "<out-dir>/<model>_<weights>.pt (static) and <out-dir>/<model>_<weights>_flow.pt (dynamic)"


def fetch(name: str) -> tuple[str, str, dict[str, Any]]:
    """torchvision's DEFAULT weights of model `name`: their tag, URL and state dict (downloaded once
    into torch's hub cache)."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    try:
        state = weights.get_state_dict(progress=True)
    except OSError as exc:  # no network (URLError), or a refused connection
        raise SystemExit(
            f"weights: cannot download {weights.url} ({exc}); run this once on a machine with internet "
            "and copy the files it writes"
        ) from None
    return weights.name, weights.url, state


def without_head(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith(HEAD)}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(state: dict[str, Any], path: Path, source: str) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    print(f"{path}  sha256 {sha256(path)}  from {source}")
    return path


def make_static(name: str, out_dir: Path) -> Path:
    """The ImageNet ResNet `name` as a local state dict, without its head."""
    tag, url, state = fetch(name)
    return save(without_head(state), out_dir / f"{name}_{tag.lower()}.pt", url)


def make_dynamic(name: str, out_dir: Path) -> Path:
    """The Kinetics-400 video ResNet `name` with a 2-channel flow stem, without its head."""
    from model.network import flow_stem_from_rgb

    tag, url, state = fetch(name)
    return save(flow_stem_from_rgb(without_head(state)), out_dir / f"{name}_{tag.lower()}_flow.pt", url)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("stages.weights", __doc__, READS, WRITES)
    parser.add_argument("--out-dir", type=Path, default=Path("data/weights"), help="where the files go")
    parser.add_argument(
        "--static",
        default="resnet50",
        choices=(*STATIC_BACKBONES, "none"),
        help="ImageNet ResNet (none: skip)",
    )
    parser.add_argument(
        "--dynamic",
        default="r2plus1d_18",
        choices=(*DYNAMIC_PRETRAINED, "none"),
        help="Kinetics-400 video ResNet, converted to the flow stem (none: skip)",
    )
    args = cli.parse(parser, argv)
    if args.static != "none":
        make_static(args.static, args.out_dir)
    if args.dynamic != "none":
        make_dynamic(args.dynamic, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
