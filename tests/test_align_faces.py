"""align-faces: template, interpolation and tracking on tiny inputs; MTCNN on real and generated clips."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from skimage import data

from stages import align_faces as stage
from stages.common import SkipClip, load_params, worker_state
from stages.preprocess import faces as af
from stages.preprocess import template as tm
from stages.preprocess.records import Frames
from stages.preprocess.storage import save_frames
from stages.preprocess.video import sample_frames
from tests.fixtures import READABLE, face_frames, gradient_frames, head_image, make_bad_clips

CFG = af.AlignConfig.from_params(load_params("faces", Path(__file__).resolve().parents[1] / "params.yaml"))


@pytest.fixture(scope="module")
def detector() -> af.FaceDetector:
    return af.make_detector()


def eye_errors(faces: np.ndarray, detector: af.FaceDetector, cfg: af.AlignConfig) -> np.ndarray:
    """Re-detect the landmarks on aligned crops (upscaled 2x for MTCNN) and return, per crop, the larger
    distance in crop pixels between a detected eye and the template's eye; NaN where nothing was found."""
    up = [cv2.resize(f, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR) for f in faces]
    det = af.detect_frames(np.stack(up), np.arange(len(up)), detector, replace(cfg, detect_side=2 * cfg.size))
    target = af.template(cfg.size, cfg.margin)
    errors = np.full(len(faces), np.nan)
    for i, (landmarks, scores) in enumerate(zip(det.landmarks, det.scores, strict=True)):
        if len(scores):
            eyes = (landmarks[np.argmax(scores), :2] + 0.5) / 2 - 0.5
            errors[i] = np.linalg.norm(eyes - target[:2], axis=1).max()
    return errors


# ---------------------------------------------------------------- pure geometry and bookkeeping


def test_template_is_the_arcface_layout_shrunk_toward_the_centre() -> None:
    plain = af.template(112, 0.0)
    np.testing.assert_allclose(plain, tm.ARCFACE_112, atol=1e-4)
    shrunk = af.template(112, 0.25)
    np.testing.assert_allclose(shrunk - 56, 0.75 * (plain - 56), atol=1e-4)
    np.testing.assert_allclose(af.template(224, 0.25), 2 * shrunk, atol=1e-4)
    left_eye, right_eye, nose, mouth_left, mouth_right = shrunk
    assert left_eye[0] < nose[0] < right_eye[0]
    assert left_eye[1] < nose[1] < mouth_left[1] and mouth_left[0] < mouth_right[0]


def test_interpolation_fills_only_gaps_between_two_sightings() -> None:
    index = np.array([0, 3, 6, 9])
    present = np.array([True, True, False, True])
    values = np.array([[0.0, 10.0], [3.0, 40.0], [99.0, 99.0], [9.0, 0.0]])
    out, valid = af.interpolate_track(index, values, present, 10)
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(out[:4, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(out[:4, 1], [10, 20, 30, 40])
    np.testing.assert_allclose(out[9], [9, 0])
    assert not np.any(out == 99.0), "an absent detection's values must never be used"


def test_interpolation_without_any_sighting_is_all_invalid() -> None:
    _, valid = af.interpolate_track(np.array([0, 2]), np.zeros((2, 3)), np.zeros(2, bool), 3)
    assert not valid.any()


def test_nearest_valid_prefers_the_earlier_frame_on_a_tie() -> None:
    valid = np.array([0, 1, 0, 1, 0, 0, 0, 1], bool)
    np.testing.assert_array_equal(af.nearest_valid(valid), [1, 1, 1, 3, 3, 3, 7, 7])


def test_smoothing_stays_inside_runs_of_valid_frames() -> None:
    values = np.array([0.0, 0.0, 0.0, 9.0, 100.0, 100.0, 130.0])
    valid = np.array([1, 1, 1, 1, 0, 1, 1], bool)
    out = af.smooth_track(values, valid, 3)
    np.testing.assert_allclose(out[:4], [0, 0, 3, 6])
    np.testing.assert_allclose(out[5:], [110, 120])
    np.testing.assert_array_equal(af.smooth_track(values, valid, 1), values)


def test_tracking_keeps_the_main_face_when_another_comes_and_goes() -> None:
    main = np.array([100.0, 60.0, 220.0, 200.0])  # large and central in a 320 x 240 frame
    side = np.array([250.0, 20.0, 300.0, 80.0])
    boxes, index = [], []
    for d in range(8):
        step = main + np.array([2 * d, d, 2 * d, d])
        if d in (3, 4):  # the main face is hidden while the other one shows
            frame = [side]
        elif d % 2:
            frame = [side, step]  # listed first, so taking index 0 would be wrong
        else:
            frame = [step]
        boxes.append(np.array(frame))
        index.append(d)
    det = af.Detections(
        np.array(index), boxes, [np.zeros((len(b), 5, 2)) for b in boxes], [np.ones(len(b)) for b in boxes]
    )
    chosen = af.track_main_face(det, (320, 240), CFG.track_distance)
    np.testing.assert_array_equal(chosen, [0, 1, 0, -1, -1, 1, 0, 1])


def test_refinement_asks_for_frames_where_the_face_moves_or_appears() -> None:
    box = np.array([[100.0, 50.0, 150.0, 100.0]])  # side 50
    still = np.zeros((1, 5, 2))
    moved = still + 10.0  # 0.2 face sides
    det = af.Detections(
        np.array([0, 3, 6, 9, 12]),
        [box, box, box + 30, box + 30, box + 30],
        [still, still, moved, moved, moved],
        [np.ones(1)] * 5,
    )
    chosen = np.array([0, 0, 0, 0, -1])
    extra = af.refine_frames(det, chosen, 0.1, (320, 240))
    np.testing.assert_array_equal(extra.index, [4, 5, 10, 11])
    assert extra.window == (130, 130)  # twice the side plus the 30-px move
    np.testing.assert_array_equal(extra.origins[0], [125 + 10 - 65, 75 + 10 - 65])
    np.testing.assert_array_equal(extra.origins[2], [155 - 65, 105 - 65])
    assert len(af.refine_frames(det, np.full(5, -1), 0.1, (320, 240)).index) == 0
    assert len(af.refine_frames(det, chosen, 0.5, (320, 240)).index) == 2


def test_window_detection_matches_whole_frame_detection(detector: af.FaceDetector) -> None:
    frames = face_frames(2, (320, 240))
    whole = af.detect_frames(frames, np.array([0, 1]), detector, CFG)
    box = whole.boxes[1][0]
    origins = np.array([[0, 0], np.floor(box[:2] - 40).astype(int)])
    windowed = af.detect_frames(frames, np.array([0, 1]), detector, CFG, (200, 200), origins)
    np.testing.assert_allclose(windowed.landmarks[1], whole.landmarks[1], atol=1.5)
    np.testing.assert_allclose(windowed.boxes[1], whole.boxes[1], atol=3.0)


def test_compiled_networks_find_what_eager_ones_find(detector: af.FaceDetector) -> None:
    eager = af.make_detector(compiled=False)
    # Two frame sizes and two batch sizes, so that traces are made, reused and generalised.
    for frames, index in [
        (face_frames(3, (320, 240)), np.array([0])),
        (face_frames(3, (320, 240)), np.array([1])),
        (face_frames(3, (240, 320), seed=1), np.arange(3)),
    ]:
        fast = af.detect_frames(frames, index, detector, CFG)
        slow = af.detect_frames(frames, index, eager, CFG)
        assert [len(b) for b in fast.boxes] == [len(b) for b in slow.boxes]
        assert sum(len(b) for b in fast.boxes) >= len(index)
        for a, b in zip(fast.landmarks + fast.boxes, slow.landmarks + slow.boxes, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-3)
    assert af.compile_networks(detector) is detector  # compiling twice wraps nothing twice
    assert all(
        isinstance(s, af.TensorInput) and not isinstance(s.stage, af.TensorInput) for s in detector.stages
    )


def test_a_tensor_input_stage_copies_without_recursing() -> None:
    import copy
    from types import SimpleNamespace

    stage = af.TensorInput(SimpleNamespace(_model="net"))  # attributes are the wrapped stage's
    assert copy.copy(stage)._model == "net" and copy.deepcopy(stage)._model == "net"


def test_stages_given_one_tensor_find_exactly_what_they_find_from_arrays(detector: af.FaceDetector) -> None:
    """TensorInput converts the batch once per stage instead of at every use: the same numbers."""
    arrays = af.make_detector()
    arrays.stages[:] = [s.stage for s in arrays.stages]  # compiled networks, handed NumPy arrays
    frames = face_frames(4, (320, 240), seed=2)
    a = af.detect_frames(frames, np.arange(4), detector, CFG)
    b = af.detect_frames(frames, np.arange(4), arrays, CFG)
    assert sum(len(x) for x in a.boxes) >= 4
    for x, y in zip(a.boxes + a.landmarks + a.scores, b.boxes + b.landmarks + b.scores, strict=True):
        np.testing.assert_array_equal(x, y)


def test_coverage_reasons() -> None:
    with pytest.raises(SkipClip, match=r"^no face$"):
        af.check_coverage(np.zeros(10, bool), 0.5)
    with pytest.raises(SkipClip, match=r"face in 30% of frames < 50%"):
        af.check_coverage(np.arange(10) < 3, 0.5)
    af.check_coverage(np.arange(10) < 5, 0.5)


# ---------------------------------------------------------------- with MTCNN


@pytest.mark.shared_data
def test_real_clip_is_aligned_onto_the_template(real_clip: Path, detector: af.FaceDetector) -> None:
    # The pixel bounds below were set on a crop with a 0.25 margin (the real-data crop of
    # configs/full.yaml); the default's tighter crop scales every error by 1 / 0.75.
    cfg = replace(CFG, margin=0.25)
    frames = sample_frames(real_clip, 5, 640).frames
    assert abs(len(frames) - 77) <= 2
    track = af.align_clip(frames, detector, cfg)
    assert track.faces.shape == (len(frames), cfg.size, cfg.size, 3) and track.faces.dtype == np.uint8
    assert track.valid.mean() >= 0.95
    assert track.confidence[track.valid].min() > cfg.threshold_onet
    target = af.template(cfg.size, cfg.margin)
    # The similarity fit itself: in every crop the tracked eyes land within 3 px of the template's
    # eyes (weighting the eyes in the fit keeps a turned head's bent layout from pulling them off).
    residual = []
    for landmarks in track.landmarks:
        matrix = af.similarity_matrix(landmarks, target, cfg.eye_weight)
        eyes = landmarks[:2] @ matrix[:, :2].T + matrix[:, 2]
        residual.append(np.linalg.norm(eyes - target[:2], axis=1).max())
    assert max(residual) < 3.0
    # The honest check: MTCNN finds the eyes of the aligned crops where the template puts them.
    errors = eye_errors(track.faces[::3], detector, cfg)
    assert not np.isnan(errors).any()
    assert np.median(errors) < 2.0
    assert np.mean(errors < 3.0) >= 0.8
    assert errors.max() < 8.0
    # Landmarks are in the input frames' pixels, inside the face's box.
    inside = (track.landmarks >= track.boxes[:, None, :2] - 2) & (
        track.landmarks <= track.boxes[:, None, 2:] + 2
    )
    assert inside.all()


@pytest.mark.shared_data
def test_small_carphone_clip(carphone_clip: Path, detector: af.FaceDetector) -> None:
    frames = sample_frames(carphone_clip, 5, 640).frames
    assert frames.shape[1:3] == (144, 176)
    track = af.align_clip(frames, detector, CFG)
    assert track.valid.mean() >= 0.95
    errors = eye_errors(track.faces, detector, CFG)
    assert not np.isnan(errors).any()
    assert np.median(errors) < 2.5 and np.mean(errors < 3.0) >= 0.7


def two_face_frames(n: int, hide_main: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A large swaying head in the middle and a small LFW face at the side on every other frame; the
    main head is hidden on `hide_main`. Returns the frames and the main head's centre per frame."""
    head = cv2.resize(head_image(), (176, 192), interpolation=cv2.INTER_AREA)
    small = cv2.resize((data.lfw_subset()[0] * 255).astype(np.uint8), (44, 44), interpolation=cv2.INTER_CUBIC)
    frames = np.full((n, 240, 320, 3), 110, np.uint8)
    centres = np.zeros((n, 2))
    for i in range(n):
        x0, y0 = 70 + 3 * i, 24 + (i % 3)
        if i not in hide_main:
            frames[i, y0 : y0 + 192, x0 : x0 + 176] = head
        centres[i] = (x0 + 88, y0 + 96)
        if i % 2 == 0 or i in hide_main:
            frames[i, 20:64, 262:306] = small[..., None]
    return frames, centres


def test_track_never_switches_person(detector: af.FaceDetector) -> None:
    frames, centres = two_face_frames(14, hide_main=(6, 7))
    cfg = replace(CFG, detect_every=2, smooth_window=1)
    det = af.detect_clip(frames, detector, cfg)
    assert max(len(b) for b in det.boxes) == 2, "both faces must be detected for the test to mean anything"
    track = af.align_clip(frames, detector, cfg)
    np.testing.assert_array_equal(np.flatnonzero(~track.valid), [6, 7])
    box_centres = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
    # Hidden frames take the nearest frame's main face, never the small face at (284, 42).
    reference = centres[af.nearest_valid(track.valid)]
    assert np.abs(box_centres - reference).max() < 30
    assert (box_centres[:, 0] < 250).all()
    np.testing.assert_array_equal(track.faces[6], track.faces[5])
    np.testing.assert_array_equal(track.faces[7], track.faces[8])


def test_no_face_clip_is_skipped_with_its_reason(detector: af.FaceDetector) -> None:
    with pytest.raises(SkipClip, match=r"^no face$"):
        af.align_clip(gradient_frames(6, (320, 240)), detector, CFG)


def test_rare_face_clip_is_skipped_with_its_ratio(detector: af.FaceDetector) -> None:
    frames = gradient_frames(10, (320, 240))
    frames[:3] = face_frames(3, (320, 240))
    with pytest.raises(SkipClip, match=r"face in 30% of frames < 50%"):
        af.align_clip(frames, detector, replace(CFG, detect_every=1))


def test_awkward_but_readable_clips(tmp_path: Path, detector: af.FaceDetector) -> None:
    clips = make_bad_clips(tmp_path, seconds=1.0)
    for case in READABLE:
        frames = sample_frames(clips[case], 5, 640).frames
        if case == "no_face":
            with pytest.raises(SkipClip, match=r"^no face$"):
                af.align_clip(frames, detector, CFG)
            continue
        track = af.align_clip(frames, detector, CFG)
        assert track.valid.all(), case
        assert track.faces.shape == (len(frames), CFG.size, CFG.size, 3), case


def test_tiny_frames_are_skipped_not_crashed(detector: af.FaceDetector) -> None:
    for shape in [(3, 8, 8, 3), (2, 12, 40)]:
        with pytest.raises(SkipClip, match=r"^no face$"):
            af.align_clip(np.zeros(shape, np.uint8), detector, CFG)
    with pytest.raises(SkipClip, match="no frames"):
        af.align_clip(np.zeros((0, 32, 32, 3), np.uint8), detector, CFG)


def test_grayscale_frames_are_aligned(detector: af.FaceDetector) -> None:
    gray = face_frames(4, (240, 320))[..., 1]  # portrait, one channel
    track = af.align_clip(gray, detector, CFG)
    assert track.valid.all() and track.faces.shape == (4, CFG.size, CFG.size, 3)


def test_skipped_frames_are_interpolated_between_detections(detector: af.FaceDetector) -> None:
    frames = face_frames(7, (320, 240), fps=25.0)
    every = replace(CFG, detect_every=1, refine_motion=0.0, smooth_window=1)
    sparse = replace(every, detect_every=3)
    full = af.align_clip(frames, detector, every)
    interpolated = af.align_clip(frames, detector, sparse)
    np.testing.assert_allclose(interpolated.landmarks[[0, 3, 6]], full.landmarks[[0, 3, 6]], atol=1e-3)
    np.testing.assert_allclose(
        interpolated.landmarks[1], (2 * full.landmarks[0] + full.landmarks[3]) / 3, atol=1e-3
    )
    face_side = np.sqrt(np.prod(full.boxes[:, 2:] - full.boxes[:, :2], axis=1)).mean()
    assert np.abs(interpolated.landmarks - full.landmarks).max() < 0.05 * face_side


# ---------------------------------------------------------------- the stage


def test_main_writes_resumes_and_reports(tmp_path: Path, detector: af.FaceDetector, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = {
        "faces": {**load_params("faces", Path(stage.__file__).parents[1] / "params.yaml"), "workers": 1}
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))
    os.makedirs("data/shards")
    pd.DataFrame({"clip": ["face_clip", "gradient", "missing"], "split": ["train", "val", "val"]}).to_csv(
        "data/shards/0.csv", index=False
    )
    for name, split, images in [
        ("face_clip", "train", face_frames(5, (320, 240))),
        ("gradient", "val", gradient_frames(5, (320, 240))),
    ]:
        frames = Frames(images, np.arange(5) / 5.0, 25.0, (640, 480))
        save_frames(f"data/frames/0/{split}/{name}.npz", frames, "webp", 90, key="k")
    stage.main()
    out = Path("data/faces/0/train/face_clip.npz")
    with np.load(out) as z:
        assert z["faces"].shape == (5, CFG.size, CFG.size, 3)
        assert z["valid"].all() and z["key"].dtype.kind == "U"
        np.testing.assert_allclose(z["timestamps"], np.arange(5) / 5.0)
        # Stored in the 640 x 480 source's pixels: twice the 320 x 240 frames'.
        assert z["boxes"][:, 2].max() > 320 * 0.6 and z["landmarks"].shape == (5, 5, 2)
    assert not Path("data/faces/0/val/gradient.npz").exists()
    report = json.loads(Path("reports/data/faces/0.json").read_text())
    reasons = {c["clip"]: c["reason"] for c in report["skipped_clips"]}
    assert reasons["gradient"] == "no face" and "extract-frames" in reasons["missing"]
    assert report["detection"]["train"]["detection_rate"] == 1.0
    assert Path("reports/logs/align_faces.log").exists()
    stamp = out.stat().st_mtime_ns
    # Clips left out are retried on every run; without them a rerun has nothing to detect.
    pd.DataFrame({"clip": ["face_clip"], "split": ["train"]}).to_csv("data/shards/0.csv", index=False)
    stage.main()
    assert out.stat().st_mtime_ns == stamp
    assert not worker_state()._detector, "a run of cached clips must not build a detector"
    report = json.loads(Path("reports/data/faces/0.json").read_text())
    assert report["counts"]["train"]["cached"] == 1
