"""Where the model sees each finding (`AnalysisResult.finding_maps`): the CAM of a finding's own head
on the key frame where it is most probable, for the findings the clip reads as present, on every
runtime; none out of distribution. The phantom model's finding heads are untrained: their biases are
set so that two findings read as present and one as absent (outputs to show, never clinical)."""

import pytest
import torch

from pocovid.analysis import AnalysisConfig, analyze_recording
from pocovid.analysis.display import finding_name
from pocovid.phantom import write_image, write_phantom
from pocovid.testing import quick_phantom_model

torch.set_num_threads(1)  # the CI machine has 2 cores, shared
FINDINGS = ("b_lines", "a_lines", "consolidation")
CFG = AnalysisConfig(rate_hz=4, key_frames=2)


@pytest.fixture(scope="module")
def model():
    m = quick_phantom_model(size=96, n_heads=2, steps=40, findings=FINDINGS)
    with torch.no_grad():
        for head in m.heads:  # b_lines surest, consolidation present, a_lines absent, whatever the frame
            head.findings.bias.copy_(torch.tensor([14.0, -14.0, 12.0]))
    return m.eval()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    p = tmp_path_factory.mktemp("fm") / "covid.mp4"
    write_phantom(p, label="covid", n_frames=16, fps=8, width=200, height=160, seed=3)
    return p


def test_each_present_finding_gets_its_map_on_a_key_frame(model, clip, tmp_path):
    r = analyze_recording(clip, model, tmp_path, CFG)
    assert [m.finding for m in r.finding_maps] == ["b_lines", "consolidation"]  # by probability; a_lines absent
    keys = {k.index: k.rank for k in r.key_frames}
    for m in r.finding_maps:
        assert m.index in keys and m.image == f"key_frame_{keys[m.index]}_{m.finding}.png"
        assert (tmp_path / m.image).is_file() and m.image in r.artifacts()
        assert m.probability == r.findings[m.finding] and m.frame_probability > 0.99
        assert m.heat_inside_region is None or 0.0 <= m.heat_inside_region <= 1.0
    html = (tmp_path / "report.html").read_text()
    assert f'alt="{finding_name("b_lines")}"' in html and f'alt="{finding_name("a_lines")}"' not in html


def test_a_graph_runtime_draws_the_same_maps(model, clip, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'pocovid[onnx]')")
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pocovid[onnx]')")
    import dataclasses

    monkeypatch.setenv("POCOVID_CACHE_DIR", str(tmp_path / "cache"))
    a = analyze_recording(clip, model, tmp_path / "torch", dataclasses.replace(CFG, runtime="torch", report=False))
    b = analyze_recording(clip, model, tmp_path / "onnx", dataclasses.replace(CFG, runtime="onnx", report=False))
    assert b.model_info.runtime == "onnx" and [m.finding for m in a.finding_maps] == ["b_lines", "consolidation"]
    assert [(m.finding, m.index) for m in a.finding_maps] == [(m.finding, m.index) for m in b.finding_maps]
    for m, n in zip(a.finding_maps, b.finding_maps):  # the same maps, up to float32 rounding
        assert abs(m.frame_probability - n.frame_probability) <= 1e-3
        assert (m.heat_inside_region is None) == (n.heat_inside_region is None)
        if m.heat_inside_region is not None:
            assert abs(m.heat_inside_region - n.heat_inside_region) <= 1e-2


def test_no_map_out_of_distribution(model, tmp_path):
    from pocovid.testing import blank

    p = tmp_path / "blank.png"
    write_image(p, blank())
    r = analyze_recording(p, model, tmp_path / "out", CFG)
    assert r.out_of_distribution and r.finding_maps == []
    assert not list((tmp_path / "out").glob("key_frame_*_*.png"))
