"""The model card every checkpoint carries: what the model was trained on and how it scored.

Plain builtins only, so the checkpoint still loads with weights_only=True. train writes it into
best.pt and last.pt (with the validation scores at the best epoch) and to data/model/card.json;
evaluate adds the test scores (reports/model_card.json); predict reads it to say what its scores are.
"""

from __future__ import annotations

from typing import Any

SYNTHETIC = "synthetic"


def make_card(
    data_source: str, clips: dict[str, int], params_digest: str, rehearsal: bool = False
) -> dict[str, Any]:
    """A card before training: the data's source, clip counts per split and the params' digest."""
    return {
        "data_source": f"{data_source}-rehearsal" if rehearsal else data_source,
        "clips": {k: int(v) for k, v in clips.items()},
        "params_digest": params_digest,
        "validation": {},
        "test": {},
    }


def with_scores(card: dict[str, Any], split: str, scores: dict[str, float], **extra: Any) -> dict[str, Any]:
    """The card with one split's scores (1-MAE and R² per output and their means) filled in."""
    kept = {k: float(v) for k, v in scores.items() if k.startswith(("1-mae/", "r2/"))}
    return {**card, split: {**kept, **extra}}


def card_warning(card: dict[str, Any] | None) -> str:
    """What a user must be told before reading this model's scores ("" when nothing)."""
    if not card:
        return (
            "this model file carries no model card: what it was trained on is unknown, "
            "so its scores cannot be taken as personality estimates"
        )
    source = str(card.get("data_source", ""))
    if source.startswith(SYNTHETIC):
        return (
            "this model was trained on the embedded synthetic faces, not on people: its scores are "
            "not personality estimates (train on the real FI V2 data for that; see the README)"
        )
    if source.endswith("-rehearsal"):
        return (
            "this model is a rehearsal on a handful of genuine clips: its scores are not personality "
            "estimates"
        )
    return ""
