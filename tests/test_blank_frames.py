"""Frames that show nothing (a black first frame, as every video of three COVID-BLUES patients has)
are no evidence: the frame pass and training leave them out; a recording of nothing but blank
frames is still analysed, and withheld as out of distribution. Uncompressed DICOM keeps the pixels
exact, so the remaining frames can be compared one for one."""

import numpy as np
import pytest
import torch

from pocovid.analysis import AnalysisConfig, analyze_recording
from pocovid.inference import load, stream_predict
from pocovid.models.preprocess import BLANK_STD, is_blank
from pocovid.phantom import make_phantom, write_dicom
from pocovid.training.frames import extract_frames

torch.set_num_threads(1)  # the CI machine has 2 cores, shared
FPS = 6.0


@pytest.fixture(scope="module")
def model(model_file):
    return load(str(model_file))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """plain.dcm: 10 phantom frames; black_first.dcm: a black frame, then the same 10;
    all_black.dcm: 40 black frames."""
    d = tmp_path_factory.mktemp("blank")
    frames = make_phantom(label="covid", n_frames=10, fps=FPS, width=200, height=160, seed=5).frames
    black = np.zeros_like(frames[:1])
    write_dicom(d / "plain.dcm", frames, FPS)
    write_dicom(d / "black_first.dcm", np.concatenate([black, frames]), FPS)
    write_dicom(d / "all_black.dcm", np.repeat(black, 40, 0), FPS)
    return d


def test_is_blank_has_a_wide_margin():
    assert is_blank(np.zeros((224, 224), np.uint8)) and is_blank(np.full((224, 224), 128, np.uint8))
    noise = np.random.default_rng(0).normal(128, BLANK_STD / 2, (224, 224)).clip(0, 255).astype(np.uint8)
    assert is_blank(noise)  # a flat frame with a little encoder noise
    frame = make_phantom(label="regular", n_frames=1, width=224, height=224, seed=1).frames[0, ..., 0]
    assert not is_blank(frame)


def test_the_frame_pass_leaves_a_black_frame_out(model, clips):
    plain = stream_predict(clips / "plain.dcm", model, crop=False)
    black_first = stream_predict(clips / "black_first.dcm", model, crop=False)
    assert (plain.n_blank, black_first.n_blank) == (0, 1)
    assert black_first.index.tolist() == list(range(1, 11))  # frame 0 is the black one
    np.testing.assert_allclose(black_first.probs, plain.probs, atol=1e-6)  # the same frames, the same outputs


def test_analysis_counts_blank_frames_and_withholds_an_all_blank_recording(model, clips, tmp_path):
    cfg = AnalysisConfig(rate_hz=None, report=False, key_frames=1)
    r = analyze_recording(clips / "black_first.dcm", model, tmp_path / "a", cfg)
    assert (r.sampling.n_frames_analyzed, r.sampling.n_frames_blank) == (10, 1)
    assert 0.0 not in [f.time_s for f in r.frames]
    assert not any("cut short" in reason for reason in r.review_reasons)
    nothing = analyze_recording(clips / "all_black.dcm", model, tmp_path / "b", cfg)
    # analysed on a batch of its blank frames (the rest counted), so that the guard can speak
    assert nothing.sampling.n_frames_analyzed + nothing.sampling.n_frames_blank == 40
    assert nothing.sampling.n_frames_analyzed > 0 and nothing.out_of_distribution
    assert not any("cut short" in reason for reason in nothing.review_reasons)


def test_training_frames_leave_blank_frames_and_blank_clips_out(model, clips):
    fs = extract_frames([{"path": str(clips / n), "label": "covid"} for n in ("black_first.dcm", "all_black.dcm")],
                        None, ["covid", "regular"], model.input_config, progress=False)
    assert [c["n_blank"] for c in fs.clips] == [1] and not any(is_blank(px) for px in fs.frames)
    assert len(fs.failures) == 1 and "all_black.dcm" in fs.failures[0] and "blank" in fs.failures[0]
