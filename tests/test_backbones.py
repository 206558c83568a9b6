"""Tests for pipeline/backbones.py: registry, model3d_1 layout, checkpoint loading, BN calibration.

Small inputs only (T 4-8, 32-64 px; one 224 shape check with T=2): the full 48x224x224 clip
costs ~974 GFLOP. The reference (tests/modelkit.py) is written from docs/model3d_1.md with
plain functional ops, independently of the nn.Module under test.
"""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from pipeline.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Model3D1,
    BackboneSpec,
    backbone_names,
    calibrate_batchnorm,
    create_backbone,
    feature_dim,
    freeze_blocks,
    get_spec,
    load_checkpoint,
    register_backbone,
    save_published,
    save_safetensors,
    sha256_file,
)
from pipeline.architectures import NUM_BLOCKS, MobileNetV2
from pipeline.errors import FoleyError
from tests.modelkit import (CONV_LAYERS, LAYOUT_TABLE, P, Evil, published_state, reference_feature_map, rel_l2,
                            toy_clips, write_published)

# A few rows written out literally from the doc, so a typo in the loop building LAYOUT_TABLE
# (tests/modelkit.py) cannot hide.
SPOT_CHECKS = {
    "module.conv_column.block1.0.weight": [32, 3, 3, 5, 5],
    "module.conv_column.block2.3.weight": [128, 64, 3, 3, 3],
    "module.conv_column.block3.7.running_var": [256],
    "module.conv_column.block4.6.weight": [512, 256, 3, 3, 3],
    "module.conv_column.block5.4.num_batches_tracked": [],
    "module.clf_layers.0.weight": [174, 512],
}


@pytest.fixture(scope="module")
def state():
    return published_state(seed=0)


@pytest.fixture(scope="module")
def published(tmp_path_factory, state):
    return write_published(tmp_path_factory.mktemp("ckpt") / "model_best.pth.tar", state)


# --------------------------------------------------------------------------- layout

def test_layout_table_is_the_documented_one():
    assert len(LAYOUT_TABLE) == 79
    table = dict(LAYOUT_TABLE)
    for key, shape in SPOT_CHECKS.items():
        assert table[key] == shape


@pytest.mark.parametrize("name", ["model3d_1", "model3d_1_224"])
def test_state_dict_matches_layout_exactly(name):
    model = create_backbone(name)
    got = {P + k: list(v.shape) for k, v in model.state_dict().items()}
    want = {k: s for k, s in LAYOUT_TABLE if k.startswith(P)}
    assert len(want) == 77
    assert got == want


def test_module_structure():
    model = create_backbone("model3d_1")
    assert isinstance(model, Model3D1)
    for i, block in enumerate(model.blocks(), start=1):
        assert block is getattr(model, f"block{i}") and isinstance(block, nn.Sequential)
    for blk, ci, bi, *_ in CONV_LAYERS:
        seq = getattr(model, blk)
        assert isinstance(seq[ci], nn.Conv3d) and isinstance(seq[bi], nn.BatchNorm3d)
        assert isinstance(seq[bi + 1], nn.ReLU)
    for blk in ("block1", "block2", "block3", "block4"):
        last = getattr(model, blk)[-1]
        assert isinstance(last, nn.Dropout3d) and last.p == 0.2
    assert not any(isinstance(m, nn.Dropout3d) for m in model.block5)
    pooled = create_backbone("model3d_1_224")
    assert isinstance(pooled.block2[6], nn.AvgPool3d) and isinstance(pooled.block2[7], nn.Dropout3d)


def test_param_count():
    n = sum(p.numel() for p in create_backbone("model3d_1").parameters())
    assert abs(n - 23.3e6) < 0.05e6, n


def test_output_shapes_and_feature_dim():
    model = create_backbone("model3d_1")
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 2, 224, 224)).shape == (1, 2, 25088)
        assert model(torch.randn(2, 3, 4, 112, 112)).shape == (2, 4, 8192)
        assert model.feature_map(torch.randn(1, 3, 5, 64, 64)).shape == (1, 512, 5, 2, 2)
    assert feature_dim("model3d_1", 224) == 25088
    assert feature_dim("model3d_1", 112) == 8192
    assert feature_dim("model3d_1_224", 64) == 2048
    for bad in (16, 0, -32, 112.0):
        with pytest.raises(FoleyError, match="size"):
            feature_dim("model3d_1", bad)


def test_time_pool_halves_t():
    model = create_backbone("model3d_1_224")
    spec = get_spec("model3d_1_224")
    assert spec.time_stride == 2 and spec.out_frames(48) == 24
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 8, 64, 64)).shape == (1, 4, 2048)
        assert model(torch.randn(1, 3, 7, 32, 32)).shape == (1, 4, 512)
        with pytest.raises(FoleyError, match="at least 3 frames"):
            model(torch.randn(1, 3, 2, 32, 32))


def test_forward_is_channel_major_flatten_of_feature_map():
    model = create_backbone("model3d_1")
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.inference_mode():
        fmap, feats = model.feature_map(x), model(x)
    b, c, t, h, w = fmap.shape
    assert torch.equal(feats[0, 2].view(c, h, w), fmap[0, :, 2])


# --------------------------------------------------------------------------- registry

def test_registry_and_unknown_name():
    assert {"model3d_1", "model3d_1_224"} <= set(backbone_names())
    spec = get_spec("model3d_1")
    assert spec.default_size == 224 and spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
    with pytest.raises(FoleyError) as err:
        get_spec("resnet9000")
    assert "resnet9000" in str(err.value)
    for name in backbone_names():
        assert name in str(err.value)
    with pytest.raises(FoleyError, match="unknown backbone"):
        create_backbone("resnet9000")
    with pytest.raises(FoleyError, match="already registered"):
        register_backbone(spec)


def test_registering_another_backbone_takes_a_few_lines():
    spec = BackboneSpec(name="tiny_test_net", builder=lambda: nn.Sequential(nn.Conv3d(3, 8, 3, (1, 4, 4), 1)),
                        default_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, time_stride=1,
                        description="test only", channels=8, spatial_stride=4)
    register_backbone(spec)
    try:
        assert "tiny_test_net" in backbone_names() and feature_dim("tiny_test_net", 64) == 8 * 16 * 16
        a, b = create_backbone("tiny_test_net", seed=3), create_backbone("tiny_test_net", seed=3)
        assert torch.equal(a[0].weight, b[0].weight) and not a.training
    finally:
        del BACKBONES["tiny_test_net"]


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_backbone("model3d_1", seed=5)
    assert torch.equal(torch.rand(1), before)
    b = create_backbone("model3d_1", seed=5)
    c = create_backbone("model3d_1", seed=6)
    assert torch.equal(a.block3[0].weight, b.block3[0].weight)
    assert not torch.equal(a.block3[0].weight, c.block3[0].weight)
    assert not a.training


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_runs(name):
    spec = get_spec(name)
    model = create_backbone(name)
    frames, size = 6, 64   # 64: a 2x2 pooled map (mobilenet_v2) needs a last map of at least 2x2
    with torch.inference_mode():
        out = model(torch.randn(1, 3, frames, size, size))
    assert out.shape == (1, spec.out_frames(frames), feature_dim(name, size))
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- checkpoints

def test_published_checkpoint_loads(published, state):
    model = create_backbone("model3d_1")
    info = load_checkpoint(model, published)
    assert info["format"] == "published"
    assert info["ignored_keys"] == ["module.clf_layers.0.bias", "module.clf_layers.0.weight"]
    assert info["sha256"] == sha256_file(published) and len(info["sha256"]) == 64
    assert info["path"] == str(published)
    assert info["meta"] == {"epoch": 7, "arch": "Conv4Col", "best_loss": 3.25}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[P + key]), key


def test_legacy_non_zip_checkpoint_loads(tmp_path, state):
    """The baseline's checkpoints predate torch's zip format (torch.save before 1.6)."""
    path = tmp_path / "legacy.pth.tar"
    torch.save({"epoch": 1, "arch": "Conv4Col", "state_dict": state, "best_loss": 1.0}, path,
               _use_new_zipfile_serialization=False)
    model = create_backbone("model3d_1")
    assert load_checkpoint(model, path)["format"] == "published"
    assert torch.equal(model.block1[0].weight, state[P + "block1.0.weight"])


@pytest.mark.parametrize("prefix", ["", "conv_column.", "module.", "module.conv_column."])
def test_bare_state_dict_loads(tmp_path, state, prefix):
    bare = {prefix + k[len(P):]: v for k, v in state.items() if k.startswith(P)}
    torch.save(bare, tmp_path / "bare.pt")
    model = create_backbone("model3d_1_224")  # same keys: the name, not the file, picks the variant
    info = load_checkpoint(model, tmp_path / "bare.pt")
    assert info["format"] == "state_dict" and info["ignored_keys"] == []
    assert torch.equal(model.block5[3].weight, state[P + "block5.3.weight"])


def test_save_and_reload_roundtrips(tmp_path, published):
    source = create_backbone("model3d_1")
    load_checkpoint(source, published)
    save_published(source, tmp_path / "out.pth.tar", epoch=3)
    raw = torch.load(tmp_path / "out.pth.tar", weights_only=True, map_location="cpu")
    assert raw["arch"] == "Conv4Col" and raw["epoch"] == 3 and "best_loss" in raw
    assert sorted(raw["state_dict"]) == sorted(k for k, _ in LAYOUT_TABLE if k.startswith(P))
    save_safetensors(source, tmp_path / "w.safetensors")
    for path, fmt in ((tmp_path / "out.pth.tar", "published"), (tmp_path / "w.safetensors", "safetensors")):
        target = create_backbone("model3d_1", seed=99)
        assert load_checkpoint(target, path)["format"] == fmt
        for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
            assert torch.equal(a, b), k
    # safetensors is recognised by content too, whatever the file is called
    (tmp_path / "w.safetensors").rename(tmp_path / "weights.bin")
    assert load_checkpoint(create_backbone("model3d_1"), tmp_path / "weights.bin")["format"] == "safetensors"


def test_channels_last_model_loads_and_saves(tmp_path, published, state):
    model = create_backbone("model3d_1", channels_last=True)
    load_checkpoint(model, published)
    assert model.block2[3].weight.is_contiguous(memory_format=torch.channels_last_3d)
    save_safetensors(model, tmp_path / "cl.safetensors")  # safetensors needs contiguous tensors
    plain = create_backbone("model3d_1")
    load_checkpoint(plain, tmp_path / "cl.safetensors")
    x = toy_clips(1, frames=4, size=32)
    with torch.inference_mode():
        assert rel_l2(model(x), plain(x)) < 1e-4


def test_mismatches_name_the_keys(tmp_path, state):
    model = create_backbone("model3d_1")
    missing = {k: v for k, v in state.items() if k != P + "block3.4.running_var"}
    with pytest.raises(FoleyError, match=r"missing 1: block3\.4\.running_var"):
        load_checkpoint(model, write_published(tmp_path / "missing.pt", missing))

    extra = dict(state, **{P + "block6.0.weight": torch.zeros(3)})
    with pytest.raises(FoleyError, match=r"unexpected 1: block6\.0\.weight"):
        load_checkpoint(model, write_published(tmp_path / "extra.pt", extra))

    wrong = dict(state, **{P + "block2.0.weight": torch.zeros(64, 32, 3, 3, 1)})
    with pytest.raises(FoleyError, match=r"wrong shape 1: block2\.0\.weight \[64, 32, 3, 3, 1\]"):
        load_checkpoint(model, write_published(tmp_path / "wrong.pt", wrong))

    # a long list is cut, and the message stays one line
    half = {k: v for i, (k, v) in enumerate(state.items()) if i % 2}
    with pytest.raises(FoleyError) as err:
        load_checkpoint(model, write_published(tmp_path / "half.pt", half))
    assert "... and" in str(err.value) and "\n" not in str(err.value) and str(tmp_path / "half.pt") in str(err.value)
    # nothing was loaded by the failed attempts
    fresh = create_backbone("model3d_1")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path):
    # the payload is real: a plain unpickler does create the marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Evil(probe))).close()
    assert probe.exists()

    marker = tmp_path / "pwned"
    torch.save({"epoch": 0, "state_dict": {"block1.0.weight": Evil(marker)}}, tmp_path / "evil.pth.tar")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"state_dict": Evil(marker)}, f, protocol=2)
    with open(tmp_path / "evil4.pkl", "wb") as f:
        pickle.dump(Evil(marker), f)
    for name in ("evil.pth.tar", "evil.pkl", "evil4.pkl"):
        with pytest.raises(FoleyError, match="refused") as err:
            load_checkpoint(create_backbone("model3d_1"), tmp_path / name)
        assert name in str(err.value)
        assert not marker.exists(), name


def test_unreadable_files_name_the_file(tmp_path, published):
    model = create_backbone("model3d_1")
    (tmp_path / "garbage.pt").write_bytes(b"definitely not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    data = published.read_bytes()
    (tmp_path / "truncated.pth.tar").write_bytes(data[: len(data) // 2])
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    for name in ("garbage.pt", "empty.pt", "truncated.pth.tar", "bad.safetensors", "list.pt", "absent.pt"):
        with pytest.raises(FoleyError) as err:
            load_checkpoint(model, tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- numerics

@pytest.mark.parametrize("name,time_pool", [("model3d_1", False), ("model3d_1_224", True)])
def test_matches_independent_functional_reference(published, state, name, time_pool):
    model = create_backbone(name)
    load_checkpoint(model, published)
    x = toy_clips(2, frames=6, size=64)
    # bf16 on one short 32 px clip: a CPU without native bf16 (AVX2 only) emulates it ~50x slower
    # than float32; on 2 clips of 6 frames at 64 px it took 64 of this file's 104 CPU seconds there
    small = toy_clips(1, frames=4, size=32, seed=1)
    with torch.inference_mode():
        ref = reference_feature_map(state, x, time_pool=time_pool)
        fmap = model.feature_map(x)
        feats = model(x)
        feats_small = model(small)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats_bf16 = model(small)
    assert fmap.shape == ref.shape
    assert rel_l2(fmap, ref) < 0.03
    b, c, t, h, w = ref.shape
    assert rel_l2(feats, ref.permute(0, 2, 1, 3, 4).reshape(b, t, c * h * w)) < 0.03
    assert feats_bf16.dtype == torch.bfloat16
    assert rel_l2(feats_bf16, feats_small) < 0.05


def test_checkpointing_gives_the_same_gradients():
    x = toy_clips(1, frames=4, size=32)
    grads = []
    for flag in (False, True):
        model = create_backbone("model3d_1", seed=1).train()
        model.checkpointing = flag
        torch.manual_seed(0)  # same dropout masks in both runs
        model(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert rel_l2(grads[1], grads[0]) < 1e-4


# --------------------------------------------------------------------------- BatchNorm calibration

def dead_fraction(model: nn.Module, x: torch.Tensor) -> float:
    """Fraction of feature dims that are zero for every clip and frame."""
    with torch.inference_mode():
        feats = model(x).flatten(0, 1)
    return (feats.abs().amax(0) == 0).float().mean().item()


def test_calibrate_batchnorm_is_deterministic_and_revives_features():
    x = toy_clips(8, frames=8, size=64)
    batches = [x[:4], x[4:]]
    model = create_backbone("model3d_1", seed=0)
    before = dead_fraction(model, x)
    calibrate_batchnorm(model, batches)
    after = dead_fraction(model, x)
    assert before > 0.3 and after < 0.05, (before, after)  # docs/learning.md: 44% dead before
    assert not model.training and all(not m.training for m in model.modules())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert all(bn.momentum == 0.1 for bn in bns)
    assert all(bn.num_batches_tracked.item() == 2 for bn in bns)

    again = calibrate_batchnorm(create_backbone("model3d_1", seed=0), iter(batches))  # a generator works too
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7), k

    with pytest.raises(FoleyError, match="no batches"):
        calibrate_batchnorm(create_backbone("model3d_1"), [])


def test_calibration_ignores_dropout_and_frozen_blocks():
    x = toy_clips(2, frames=4, size=32)
    model = freeze_blocks(create_backbone("model3d_1", seed=0).train(), 2)
    calibrate_batchnorm(model, [x])
    # block1's statistics were re-estimated even though it is frozen
    assert model.block1[1].num_batches_tracked.item() == 1
    plain = calibrate_batchnorm(create_backbone("model3d_1", seed=0), [x])
    # dropout was off: the same as calibrating a model that was in eval mode
    assert torch.allclose(model.block5[4].running_var, plain.block5[4].running_var, rtol=1e-5)


# --------------------------------------------------------------------------- freezing

def test_freeze_blocks():
    model = freeze_blocks(create_backbone("model3d_1"), 2)
    model.train()
    for i, block in enumerate(model.blocks()):
        frozen = i < 2
        assert all(m.training != frozen for m in block.modules()), i
        assert all(p.requires_grad != frozen for p in block.parameters()), i
    x = toy_clips(1, frames=4, size=32)
    model(x).mean().backward()
    assert model.block1[0].weight.grad is None and model.block2[3].weight.grad is None
    assert model.block3[0].weight.grad is not None
    running = model.block1[1].running_mean.clone()
    model(x)
    assert torch.equal(model.block1[1].running_mean, running)  # frozen BN keeps its statistics
    freeze_blocks(model, 0)
    model.train()
    assert model.block1.training and model.block1[0].weight.requires_grad
    with pytest.raises(FoleyError):
        freeze_blocks(model, 6)
    with pytest.raises(FoleyError):
        freeze_blocks(nn.Linear(2, 2), 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_channels_last_bf16_matches_cpu(published, state):
    x = toy_clips(2, frames=6, size=64)
    cpu = create_backbone("model3d_1")
    load_checkpoint(cpu, published)
    gpu = create_backbone("model3d_1", channels_last=True).cuda()
    load_checkpoint(gpu, published)
    with torch.inference_mode():
        want = cpu(x)
        got = gpu(x.cuda().contiguous(memory_format=torch.channels_last_3d))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got_bf16 = gpu(x.cuda())
    assert rel_l2(got.cpu(), want) < 0.03
    assert rel_l2(got_bf16.float().cpu(), want) < 0.05


@pytest.mark.parametrize("name", ["model3d_1_w025", "mobilenet_v2", "mobilenet_v2_spacetime",
                                  "mobilenet_v2_spacetime_mid"])
def test_trunk_of_stem_is_the_feature_map_at_every_split(name):
    net = create_backbone(name, seed=3).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        whole = net.feature_map(x)
        for n in range(NUM_BLOCKS + 1):
            if name.endswith("_mid") and n == NUM_BLOCKS:    # read after stage 4: a 5-stage stem runs past it
                with pytest.raises(FoleyError, match="read after stage 4"):
                    net.trunk(net.stem(x, n), n)
                continue
            assert torch.allclose(net.trunk(net.stem(x, n), n), whole, atol=1e-5), n


def test_stages_after_the_read_out_take_no_gradient_whatever_is_frozen():
    net = create_backbone("mobilenet_v2_spacetime_mid", seed=0).train()
    for n in (0, 2):
        freeze_blocks(net, n)
        assert not any(p.requires_grad for p in net.features[14:].parameters()), n
        assert all(p.requires_grad for p in net.features[7:14].parameters()), n
    net.zero_grad()
    net(torch.randn(1, 3, 2, 32, 32)).sum().backward()
    assert all(p.grad is None for p in net.features[14:].parameters())
    assert net.features[13].conv[0][0].weight.grad is not None
    with pytest.raises(FoleyError, match="read_stages must be 1..5"):
        MobileNetV2(read_stages=6)
