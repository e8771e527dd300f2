"""The evaluate stage: its tables and scores, and a whole run on tiny generated clips with an untrained model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from model.card import make_card, with_scores
from model.config import DataConfig, ModelConfig, TrainConfig
from model.inference import attention_arrays
from model.network import build_model
from model.records import LABEL_COLUMNS, TRAITS
from model.training import RunConfigs, load_checkpoint, save_checkpoint
from stages import evaluate
from stages.common import load_params
from stages.report.scores import label_matrix, metrics_json, predictions_frame, score_all

FACE, FLOW, K = 32, 16, 2


def test_label_matrix_follows_clip_order_and_prefix():
    table = pd.DataFrame({"clip": ["a", "b"], "oracle_x": [0.1, 0.2], "x": [0.5, 0.6]})
    np.testing.assert_allclose(label_matrix(table, ["b", "a"], ("x",), "oracle_"), [[0.2], [0.1]])
    assert np.isnan(label_matrix(table, ["c"], ("x",))).all()


def test_predictions_frame_columns_and_errors():
    truth = np.array([[0.5] * len(TRAITS), [0.2] * len(TRAITS)])
    pred = np.array([[0.4] * len(TRAITS), [0.5] * len(TRAITS)])
    frame = predictions_frame(["a", "b"], TRAITS, truth, pred)
    assert list(frame.columns[:4]) == ["clip", "openness_true", "openness_pred", "openness_abs_err"]
    assert frame.shape == (2, 1 + 3 * len(TRAITS))
    np.testing.assert_allclose(frame["neuroticism_abs_err"], [0.1, 0.3])


def test_score_all_with_and_without_oracle_and_interview():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, (40, len(LABEL_COLUMNS)))
    pred = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1)
    train = rng.uniform(0, 1, (100, len(LABEL_COLUMNS)))
    cfg = evaluate.EvalConfig(n_resamples=100).bootstrap
    r = score_all(truth, pred, train, truth, LABEL_COLUMNS, cfg)
    assert r.model["interview"]["1-mae"] == pytest.approx(1 - np.abs(truth[:, -1] - pred[:, -1]).mean())
    five = 1 - np.abs(truth[:, :5] - pred[:, :5]).mean(axis=0)
    assert r.model["mean"]["1-mae"] == pytest.approx(five.mean())  # interview is not in the mean
    assert r.oracle["mean"]["1-mae"] == pytest.approx(1.0)
    assert 0 < r.gap_closed["mean"] < 1 and r.gap_closed["mean_lo"] <= r.gap_closed["mean"]
    assert set(r.gap_closed) >= {f"{t}{s}" for t in TRAITS for s in ("", "_lo", "_hi")}
    no_oracle = score_all(truth, pred, train, np.full_like(truth, np.nan), LABEL_COLUMNS, cfg)
    assert no_oracle.oracle is None and no_oracle.gap_closed is None
    layout = metrics_json({"test": no_oracle})
    assert set(layout) == {"test", "baseline"}


# ---------------------------------------------------------------- a whole run


def _tiny_configs(**overrides) -> RunConfigs:
    """A network small enough for a test; `overrides` are top-level `model` params (streams, outputs, fusion)."""
    fusion = {"dim": 16, "heads": 2, "ff_mult": 1, "shared_position": False, **overrides.pop("fusion", {})}
    model = ModelConfig.from_params(
        {
            "static": {"frames": K, "input_size": FACE},
            "dynamic": {"input_size": FLOW, "channels": 4, "blocks": 1},
            "fusion": fusion,
            "head_hidden": 8,
            **overrides,
        }
    )
    data = DataConfig(static_frames=K, static_size=FACE, flow_size=FLOW, label_columns=model.label_columns)
    return RunConfigs(model=model, data=data, train=TrainConfig())


def _write_clip(root, split: str, name: str, t: int, rng: np.random.Generator) -> None:
    (root / "faces" / split).mkdir(parents=True, exist_ok=True)
    (root / "flow" / split).mkdir(parents=True, exist_ok=True)
    np.savez(
        root / "faces" / split / f"{name}.npz",
        faces=rng.integers(0, 256, (t, FACE, FACE, 3), dtype=np.uint8),
        valid=np.ones(t, bool),
        key="k",
    )
    np.savez(
        root / "flow" / split / f"{name}.npz",
        flow=rng.integers(-100, 100, (t - 1, FLOW, FLOW, 2), dtype=np.int8),
        scale=np.float32(0.05),
        valid=np.ones(t - 1, bool),
        key="k",
    )


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A working directory with generated faces/flow, labels, factors, params and an untrained checkpoint."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 4), ("val", 3), ("test", 5)):
        for i in range(n):
            name = f"{split}clip{i}.00{i}"
            rows.append(
                {"clip": name, "split": split, **dict(zip(LABEL_COLUMNS, rng.uniform(0, 1, 6), strict=True))}
            )
            _write_clip(tmp_path, split, name, t=4 + i, rng=rng)
    # one test clip without flow, one with an unreadable faces file: both are left out
    (tmp_path / "flow" / "test" / "testclip3.003.npz").unlink()
    (tmp_path / "faces" / "test" / "testclip4.004.npz").write_bytes(b"not an npz")
    labels = pd.DataFrame(rows)
    (tmp_path / "data").mkdir()
    labels.to_csv(tmp_path / "data" / "labels.csv", index=False)
    factors = labels[["clip", "split"]].copy()
    for col in LABEL_COLUMNS:
        factors[f"oracle_{col}"] = np.clip(labels[col] + rng.normal(0, 0.02, len(labels)), 0, 1)
    factors.to_csv(tmp_path / "data" / "factors.csv", index=False)

    torch.manual_seed(0)
    configs = _tiny_configs()
    save_checkpoint(tmp_path / "data" / "best.pt", build_model(configs.model), configs, epoch=3)
    params = {
        "evaluate": {
            "checkpoint": "data/best.pt",
            "faces_dir": "faces",
            "flow_dir": "flow",
            "labels": "data/labels.csv",
            "factors": "data/factors.csv",
            "batch_size": 2,
            "device": "cpu",
            "n_resamples": 50,
            "attention_clips": 2,
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_evaluate_run_writes_metrics_predictions_and_dumps(tiny_run):
    evaluate.main()
    m = json.loads((tiny_run / "reports" / "scores.json").read_text())
    assert set(m) == {"val", "test", "test_unseen_identity", "baseline", "oracle", "gap_closed", "r2_oracle"}
    gap = m["gap_closed"]
    assert json.loads((tiny_run / "reports" / "metrics.json").read_text()) == {  # DVC's: the headline only
        "test": {
            "1-mae": m["test"]["mean"]["1-mae"],
            "r2": m["test"]["mean"]["r2"],
            "gap": gap["test"]["mean"],
        },
        "val": {"1-mae": m["val"]["mean"]["1-mae"], "gap": gap["val"]["mean"]},
        "unseen": {
            "1-mae": m["test_unseen_identity"]["mean"]["1-mae"],
            "gap": gap["test_unseen_identity"]["mean"],
        },
    }
    assert m["test"]["n_clips"] == 3 and m["val"]["n_clips"] == 3
    # no test clip's video (the name before its number) has a training clip: all of them are unseen
    assert m["test_unseen_identity"] == m["test"]
    for section in (m["test"], m["baseline"]["test"], m["oracle"]["val"]):
        assert set(section) == {"n_clips", "mean", *TRAITS}
        assert 0 < section["mean"]["1-mae"] <= 1
        assert section["mean"]["1-mae_lo"] <= section["mean"]["1-mae"] <= section["mean"]["1-mae_hi"]
    assert "mean" in m["gap_closed"]["test"]

    test = pd.read_csv(tiny_run / "reports" / "predictions" / "test.csv")
    assert list(test["clip"]) == ["testclip0.000", "testclip1.001", "testclip2.002"]
    assert test.shape == (3, 1 + 3 * len(TRAITS))
    assert test.filter(like="_pred").apply(lambda c: c.between(0, 1)).all().all()
    assert test["openness_abs_err"].to_numpy() == pytest.approx(
        (test["openness_true"] - test["openness_pred"]).abs().to_numpy()
    )
    assert m["test"]["openness"]["1-mae"] == pytest.approx(1 - test["openness_abs_err"].mean())
    assert pd.read_csv(tiny_run / "reports" / "predictions" / "val.csv").shape == (3, 1 + 3 * len(TRAITS))

    report = json.loads((tiny_run / "reports" / "evaluate.json").read_text())
    assert set(report["test"]["left_out_clips"]) == {"testclip3.003", "testclip4.004"}
    assert report["epoch"] == 3

    with np.load(tiny_run / "reports" / "attention" / "test.npz") as z:
        assert list(z["clips"]) == ["testclip0.000", "testclip1.001"]
        assert z["faces"].shape == (2, K, FACE, FACE, 3) and z["faces"].dtype == np.uint8
        with np.load(tiny_run / "faces" / "test" / "testclip0.000.npz") as src:
            assert set(np.unique(z["faces"][0])) <= set(
                np.unique(src["faces"])
            )  # the frames, not a rescaled copy
        assert z["faces"].std() > 10
        k, h, w = z["static_grid"]
        s2d = z["static_to_dynamic"]
        assert s2d.shape[:3] == (2, 2, k * h * w) and s2d.shape[3] == z["dynamic_tokens"].max()
        for i, n in enumerate(z["dynamic_tokens"]):
            np.testing.assert_allclose(s2d[i, :, :, :n].sum(-1), 1.0, rtol=1e-5)  # real keys hold it all
        assert z["dynamic_to_static"].shape[2] == s2d.shape[3]
    with np.load(tiny_run / "reports" / "embeddings" / "test.npz") as z:
        assert z["static_emb"].shape == (3, 16) and z["dynamic_emb"].shape == (3, 16)
        np.testing.assert_allclose(z["pred"], test.filter(like="_pred").to_numpy(), rtol=1e-5)


def test_unseen_identities_are_scored_apart_and_the_card_gets_the_test_scores(tiny_run):
    """Test clips of a face that also appears in training are left out of the unseen-identity block."""
    factors = pd.read_csv(tiny_run / "data" / "factors.csv")
    first_test = factors.index[factors["split"] == "test"][0]
    factors["face_id"] = np.arange(len(factors)) + 100  # every clip its own face
    factors.loc[first_test, "face_id"] = factors.loc[
        0, "face_id"
    ]  # ... but the first test clip's is in training
    factors.to_csv(tiny_run / "data" / "factors.csv", index=False)
    configs = _tiny_configs()
    card = make_card("synthetic", {"train": 4, "val": 3, "test": 5}, "abc123")
    card = with_scores(card, "validation", {"1-mae/mean": 0.9, "loss": 0.1}, best_epoch=2)
    save_checkpoint(tiny_run / "data" / "best.pt", build_model(configs.model), configs, epoch=3, card=card)
    evaluate.main()

    m = json.loads((tiny_run / "reports" / "scores.json").read_text())
    assert m["test"]["n_clips"] == 3 and m["test_unseen_identity"]["n_clips"] == 2
    test = pd.read_csv(tiny_run / "reports" / "predictions" / "test.csv").iloc[1:]  # the two unseen clips
    assert m["test_unseen_identity"]["openness"]["1-mae"] == pytest.approx(
        1 - test["openness_abs_err"].mean()
    )
    assert (
        json.loads((tiny_run / "reports" / "evaluate.json").read_text())["test"]["unseen_identity_clips"] == 2
    )

    written = json.loads((tiny_run / "reports" / "model_card.json").read_text())
    assert written["data_source"] == "synthetic" and written["params_digest"] == "abc123"
    assert written["validation"] == {"1-mae/mean": 0.9, "best_epoch": 2}
    assert written["test"]["clips"] == 3 and written["test_unseen_identity"]["clips"] == 2
    assert written["test"]["1-mae/mean"] == pytest.approx(m["test"]["mean"]["1-mae"])
    assert written["test"]["r2/openness"] == pytest.approx(m["test"]["openness"]["r2"])


@pytest.mark.parametrize("n_attention", [0, 1, 10])
def test_attention_clips_get_the_same_outputs_as_the_rest(tiny_run, n_attention):
    cfg = evaluate.EvalConfig.from_params(load_params("evaluate"))
    cfg.attention_clips = n_attention
    model, configs, _ = load_checkpoint(cfg.checkpoint)
    labels = pd.read_csv(cfg.labels)
    dataset, left_out = evaluate.split_dataset(labels, "val", cfg.faces_dir, cfg.flow_dir, configs.data)
    assert len(dataset) == 3 and not left_out
    plain = evaluate.run_split(model, dataset, False, cfg, torch.device("cpu"))
    split = evaluate.run_split(model, dataset, True, cfg, torch.device("cpu"))
    dump = attention_arrays(split, dataset)
    assert not plain.dumps and split.clips == plain.clips
    np.testing.assert_allclose(split.pred, plain.pred, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.static_emb, plain.static_emb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(split.dynamic_emb, plain.dynamic_emb, rtol=1e-4, atol=1e-5)
    assert len(dump["clips"]) == len(dump["faces"]) == min(n_attention, 3)


@pytest.mark.parametrize(
    "overrides",
    [
        {"streams": "static", "outputs": "traits_interview"},
        {"streams": "dynamic"},
        {"fusion": {"type": "concat"}},
    ],
    ids=["static+interview", "dynamic", "concat"],
)
def test_evaluate_runs_every_ablation(tiny_run, overrides):
    configs = _tiny_configs(**overrides)
    save_checkpoint(tiny_run / "data" / "best.pt", build_model(configs.model), configs, epoch=1)
    evaluate.main()
    m = json.loads((tiny_run / "reports" / "scores.json").read_text())
    columns = configs.model.label_columns
    test = pd.read_csv(tiny_run / "reports" / "predictions" / "test.csv")
    assert test.shape == (3, 1 + 3 * len(columns))
    assert ("interview" in m["test"]) == ("interview" in columns)
    with np.load(tiny_run / "reports" / "attention" / "test.npz") as z:
        assert "static_to_dynamic" not in z and "dynamic_to_static" not in z  # no cross-attention
        assert z["faces"].shape == (2, K, FACE, FACE, 3)
    with np.load(tiny_run / "reports" / "embeddings" / "test.npz") as z:
        assert ("static_emb" in z) == (configs.model.streams != "dynamic")
        assert ("dynamic_emb" in z) == (configs.model.streams != "static")


def test_an_unscorable_test_split_still_leaves_every_declared_output(tiny_run):
    for name in ("testclip0.000", "testclip1.001"):
        (tiny_run / "faces" / "test" / f"{name}.npz").unlink()
    evaluate.main()  # one usable test clip: too few to score
    m = json.loads((tiny_run / "reports" / "scores.json").read_text())
    assert "test" not in m and "val" in m
    assert set(json.loads((tiny_run / "reports" / "metrics.json").read_text())) == {"val"}
    for dump in ("attention", "embeddings"):
        with np.load(tiny_run / "reports" / dump / "test.npz") as z:
            assert "too few usable clips" in str(z["skipped"])


def test_factor_readouts_find_what_the_predictions_carry_and_nothing_else():
    from stages.report.scores import factor_readouts

    rng = np.random.default_rng(0)
    n = 300
    pred = rng.uniform(0, 1, (n, 5))
    clips = [f"c{i}.000" for i in range(n)]
    factors = pd.DataFrame(
        {
            "clip": clips,
            "s_tint": 2 * pred[:, 0] - pred[:, 3] + rng.normal(0, 0.01, n),  # carried by the scores
            "d_blink": rng.standard_normal(n),  # independent of them
            "face_id": rng.integers(0, 9, n),  # a nuisance, not a latent factor
        }
    )
    out = factor_readouts(pred, factors.sample(frac=1, random_state=1), clips)
    assert set(out) == {"s_tint", "d_blink"}
    assert out["s_tint"]["r"] > 0.99 and out["s_tint"]["r2"] > 0.98
    assert abs(out["d_blink"]["r"]) < 0.2 and out["d_blink"]["r2"] < 0.02
    assert factor_readouts(pred[:3], factors, clips[:3]) == {}  # too few clips to cross-validate
    real = pd.DataFrame({"clip": [], "split": []})  # FI V2's factors.csv: no latent factors, no rows
    assert factor_readouts(pred, real, clips) == {}


def test_the_ceiling_gives_the_share_of_the_reachable_gap(tiny_run):
    ceiling = {split: dict.fromkeys([*TRAITS, "interview", "mean"], 0.99) for split in ("val", "test")}
    (tiny_run / "reports").mkdir(exist_ok=True)
    (tiny_run / "reports" / "ceiling.json").write_text(json.dumps(ceiling))
    evaluate.main()
    scores = json.loads((tiny_run / "reports" / "scores.json").read_text())
    model, base = scores["test"]["mean"]["1-mae"], scores["baseline"]["test"]["mean"]["1-mae"]
    assert scores["reachable_gap"]["test"]["mean"] == pytest.approx((model - base) / (0.99 - base))
    assert scores["ceiling"]["test"]["mean"] == 0.99
    headline = json.loads((tiny_run / "reports" / "metrics.json").read_text())
    assert headline["test"]["reach"] == pytest.approx(scores["reachable_gap"]["test"]["mean"])
    assert headline["test"]["ceiling"] == 0.99  # the ceiling itself sits beside the share
    # R² against the oracle's noise-free labels, from the predictions written beside them
    test = pd.read_csv(tiny_run / "reports" / "predictions" / "test.csv")
    factors = pd.read_csv(tiny_run / "data" / "factors.csv").set_index("clip").loc[test["clip"]]
    oracle, pred = factors["oracle_openness"].to_numpy(), test["openness_pred"].to_numpy()
    r2 = 1 - ((oracle - pred) ** 2).sum() / ((oracle - oracle.mean()) ** 2).sum()
    assert scores["r2_oracle"]["test"]["openness"] == pytest.approx(r2, rel=1e-4)
