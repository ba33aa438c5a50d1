"""Tests of the reference models: backbones, clip-level and token-level MoE, GFLOP counting."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from tlga_attacks.models import (
    BACKBONE_NAMES,
    MODEL_NAMES,
    DenseVideoMoE,
    MoEVideoTransformer,
    VideoMoE,
    build_backbone,
    build_model,
    count_gflops,
)
from tlga_attacks.models.backbones import TemporalShift

SMALL_CLIP = (3, 8, 16, 16)
TRANSFORMER_CLIP = (3, 8, 16, 16)

# Router logit weights per channel: red clips go to expert 0, green to 1, blue to 2 and
# dark clips (bias 4 wins) to expert 3.
COLOR_ROUTER_WEIGHT = [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [-5.0, -5.0, -5.0]]
COLOR_ROUTER_BIAS = [0.0, 0.0, 0.0, 4.0]
COLORS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "dark": (0.05, 0.05, 0.05)}


def make_color_router() -> nn.Module:
    """Return a router whose top-1 expert is known from the clip's mean color."""
    linear = nn.Linear(3, 4)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(COLOR_ROUTER_WEIGHT))
        linear.bias.copy_(torch.tensor(COLOR_ROUTER_BIAS))
    return nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), linear)


def make_colored_clips(names, shape=SMALL_CLIP) -> torch.Tensor:
    """Return clips of the given mean colors with a little uniform noise, values in [0, 1]."""
    clips = []
    for name in names:
        color = torch.tensor(COLORS[name]).view(3, 1, 1, 1)
        clips.append((0.9 * color + 0.05 * torch.rand(shape)).clamp(0, 1))
    return torch.stack(clips)


def record_expert_inputs(experts: nn.ModuleList):
    """Register hooks that store each expert's input per call and return (calls, handles)."""
    calls = {index: [] for index in range(len(experts))}
    handles = []
    for index, expert in enumerate(experts):
        hook = lambda module, args, output, index=index: calls[index].append(args[0].detach().clone())
        handles.append(expert.register_forward_hook(hook))
    return calls, handles


def gate_weighted_sum(router_logits, expert_fn, top_k, num_rows):
    """Compute the MoE output row by row: the softmax over all router logits, taken at the
    top-k experts, times the expert outputs."""
    rows = []
    for row in range(num_rows):
        indices = router_logits[row].topk(top_k).indices
        weights = router_logits[row].softmax(dim=-1)[indices]
        rows.append(sum(weight * expert_fn(int(index), row) for weight, index in zip(weights, indices)))
    return torch.stack(rows)


# ----------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_maps_clip_to_logits(name):
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=5).eval()

    with torch.no_grad():
        logits = model(torch.rand(2, 3, 4, 32, 32))

    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_backbone_loads_weights_file(tmp_path, suffix):
    torch.manual_seed(0)
    source = build_backbone("tiny3d", num_classes=5)
    path = tmp_path / f"tiny3d{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)

    loaded = build_backbone("tiny3d", num_classes=5, weights=path)

    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_backbone_weights_replace_final_layer(tmp_path):
    torch.manual_seed(0)
    kinetics_style = build_backbone("mc3_18", num_classes=400)
    path = tmp_path / "mc3_18_kinetics.pt"
    torch.save(kinetics_style.state_dict(), path)

    model = build_backbone("mc3_18", num_classes=10, weights=str(path))

    assert model.fc.weight.shape == (10, 512)
    assert torch.equal(model.stem[0].weight, kinetics_style.stem[0].weight)
    assert torch.equal(model.layer4[1].conv2[0].weight, kinetics_style.layer4[1].conv2[0].weight)
    assert model(torch.rand(1, 3, 4, 32, 32)).shape == (1, 10)


def test_tsm_loads_imagenet_resnet18_keys(tmp_path):
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.safetensors"
    save_file(resnet.state_dict(), str(path))

    model = build_backbone("tsm_resnet18", num_classes=7, weights=path)

    assert torch.equal(model.conv1.weight, resnet.conv1.weight)
    assert model.fc.weight.shape == (7, 512)


def test_backbone_missing_weights_raises(tmp_path):
    missing = tmp_path / "nowhere.pt"

    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_backbone("tiny3d", num_classes=5, weights=missing)


def test_backbone_mismatched_weights_raise(tmp_path):
    path = tmp_path / "tiny3d.pt"
    torch.save(build_backbone("tiny3d", num_classes=5).state_dict(), path)

    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("tsm_resnet18", num_classes=5, weights=path)


def test_backbone_non_state_dict_file_raises(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": build_backbone("tiny3d", num_classes=5).state_dict()}, path)

    with pytest.raises(ValueError, match="state dict"):
        build_backbone("tiny3d", num_classes=5, weights=path)


def test_backbone_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name='resnet50'"):
        build_backbone("resnet50", num_classes=5)
    with pytest.raises(ValueError, match="num_classes=1"):
        build_backbone("tiny3d", num_classes=1)
    with pytest.raises(ValueError, match="width=0"):
        build_backbone("tiny3d", num_classes=5, width=0)
    with pytest.raises(ValueError, match="width=2"):
        build_backbone("r3d_18", num_classes=5, width=2)


def test_tiny3d_width_multiplier_scales_channels():
    narrow = build_backbone("tiny3d", num_classes=5, width=0.5)
    wide = build_backbone("tiny3d", num_classes=5, width=2.0)

    assert narrow.block1.conv.out_channels == 8
    assert wide.block3.conv.out_channels == 128
    assert wide.fc.in_features == 128


def test_temporal_shift_moves_channel_groups():
    shift = TemporalShift(shift_divisor=4)
    shift.num_frames = 3
    # One clip of 3 frames and 8 channels, where every value is 10 * frame + channel.
    clip = (10 * torch.arange(3).view(3, 1) + torch.arange(8).view(1, 8)).float().view(3, 8, 1, 1)

    shifted = shift(clip).view(3, 8)

    assert shifted[0, 0].item() == 10.0  # channels 0-1 of frame 0 come from frame 1
    assert shifted[2, 0].item() == 0.0  # the last frame has no next frame
    assert shifted[1, 2].item() == 2.0  # channels 2-3 of frame 1 come from frame 0
    assert shifted[0, 3].item() == 0.0  # the first frame has no previous frame
    assert torch.equal(shifted[:, 4:], clip.view(3, 8)[:, 4:])


def test_tsm_output_depends_on_frame_order():
    torch.manual_seed(0)
    model = build_backbone("tsm_resnet18", num_classes=5).eval()
    clip = torch.rand(1, 3, 4, 32, 32)

    with torch.no_grad():
        forward = model(clip)
        reversed_time = model(clip.flip(2))

    assert not torch.allclose(forward, reversed_time, atol=1e-6)


# ----------------------------------------------------------------------------- VideoMoE


def test_video_moe_runs_only_selected_experts():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, num_experts=4, top_k=1).eval()
    model.router = make_color_router()
    clips = make_colored_clips(["red", "dark", "red", "green"])
    calls, handles = record_expert_inputs(model.experts)

    with torch.no_grad():
        model(clips)
    for handle in handles:
        handle.remove()

    assert len(calls[0]) == 1
    assert torch.equal(calls[0][0], clips[[0, 2]])
    assert len(calls[1]) == 1
    assert torch.equal(calls[1][0], clips[[3]])
    assert calls[2] == []
    assert len(calls[3]) == 1
    assert torch.equal(calls[3][0], clips[[1]])


def test_video_moe_single_clip_runs_one_expert():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, num_experts=4, top_k=1).eval()
    calls, handles = record_expert_inputs(model.experts)

    with torch.no_grad():
        model(torch.rand(1, *SMALL_CLIP))
    for handle in handles:
        handle.remove()

    assert sum(len(expert_calls) for expert_calls in calls.values()) == 1


@pytest.mark.parametrize("top_k", [1, 2])
def test_video_moe_matches_gate_weighted_sum(top_k):
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, num_experts=4, top_k=top_k).eval()
    clips = torch.rand(3, *SMALL_CLIP)

    with torch.no_grad():
        logits = model(clips)
        router_logits = model.router(clips)
        expected = gate_weighted_sum(
            router_logits, lambda index, row: model.experts[index](clips[row : row + 1])[0], top_k, len(clips)
        )

    assert router_logits.shape == (3, 4)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_video_moe_top2_runs_two_experts_per_clip():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, num_experts=4, top_k=2).eval()
    model.router = make_color_router()
    calls, handles = record_expert_inputs(model.experts)

    with torch.no_grad():
        model(make_colored_clips(["dark"]))
    for handle in handles:
        handle.remove()

    # A dark clip has logits (0.xx, 0.xx, 0.xx, ~4): expert 3 and one of experts 0-2 run.
    ran = [index for index, expert_calls in calls.items() if expert_calls]
    assert len(ran) == 2
    assert 3 in ran


def test_video_moe_batch_matches_single_clips():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, num_experts=4, top_k=2).eval()
    model.router = make_color_router()
    clips = make_colored_clips(["red", "dark", "blue", "green", "red"])

    with torch.no_grad():
        batch_logits = model(clips)
        single_logits = torch.cat([model(clips[index : index + 1]) for index in range(len(clips))])

    assert torch.allclose(batch_logits, single_logits, atol=1e-5)


def test_video_moe_top2_gradient_reaches_router():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, num_experts=4, top_k=2)
    clips = torch.rand(4, *SMALL_CLIP, requires_grad=True)

    F.cross_entropy(model(clips), torch.tensor([0, 1, 2, 3])).backward()

    assert model.router.fc.weight.grad.abs().sum() > 0
    assert model.router.block1.conv.weight.grad.abs().sum() > 0
    assert clips.grad.abs().sum() > 0


def test_video_moe_top1_router_learns_from_task_loss():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, num_experts=4, top_k=1)
    clips = torch.rand(4, *SMALL_CLIP)

    F.cross_entropy(model(clips), torch.tensor([0, 1, 2, 3])).backward()

    # The top-1 gate weight is the softmax over all M logits, so it depends on the router.
    assert model.router.fc.weight.grad.abs().sum() > 0


def test_video_moe_stores_aux_loss():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, num_experts=4, top_k=1)
    assert model.aux_loss is None

    model(torch.rand(4, *SMALL_CLIP))

    assert model.aux_loss.shape == ()
    assert model.aux_loss.requires_grad
    assert torch.isfinite(model.aux_loss)
    assert 0 < model.aux_loss.item() <= 4


def test_video_moe_aux_loss_penalizes_collapse():
    model = VideoMoE(num_classes=5, num_experts=4, top_k=1).eval()
    model.router = make_color_router()

    with torch.no_grad():
        model(make_colored_clips(["red", "green", "blue", "dark"]))
        balanced = model.aux_loss.item()
        model(make_colored_clips(["red", "red", "red", "red"]))
        collapsed = model.aux_loss.item()

    assert balanced < 1.1
    assert collapsed > 3.5


def test_video_moe_noise_only_in_training():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=5, noisy_gating=True, noise_std=1.0)
    clips = torch.rand(2, *SMALL_CLIP)

    model.eval()
    with torch.no_grad():
        assert torch.equal(model.router(clips), model.router(clips))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model.router(clips), model.router(clips))


def test_video_moe_config_rebuilds_model():
    model = VideoMoE(num_classes=5, num_experts=3, top_k=2, router_width=4, expert_width=0.5)

    config = json.loads(json.dumps(model.config))
    rebuilt = build_model(**config)

    assert isinstance(rebuilt, VideoMoE)
    assert rebuilt.config == model.config
    assert rebuilt.num_experts == 3
    assert rebuilt.top_k == 2
    assert rebuilt.num_classes == 5
    assert {key: value.shape for key, value in rebuilt.state_dict().items()} == {
        key: value.shape for key, value in model.state_dict().items()
    }


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"num_classes": 1}, "num_classes=1"),
        ({"num_classes": 5, "num_experts": 0}, "num_experts=0"),
        ({"num_classes": 5, "num_experts": 4, "top_k": 5}, "top_k=5"),
        ({"num_classes": 5, "top_k": 0}, "top_k=0"),
        ({"num_classes": 5, "expert": "vit"}, "expert='vit'"),
        ({"num_classes": 5, "router_width": 0}, "router_width=0"),
        ({"num_classes": 5, "noise_std": -1.0}, "noise_std=-1.0"),
    ],
)
def test_video_moe_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        VideoMoE(**kwargs)


def test_video_moe_rejects_channels_last_video():
    model = VideoMoE(num_classes=5)

    with pytest.raises(ValueError, match=r"expected \(N, 3, T, H, W\)"):
        model(torch.rand(1, 8, 3, 16, 16))


# ----------------------------------------------------------------------------- DenseVideoMoE


def test_dense_moe_runs_all_experts():
    torch.manual_seed(0)
    model = DenseVideoMoE(num_classes=5, num_experts=4).eval()
    clips = torch.rand(2, *SMALL_CLIP)
    calls, handles = record_expert_inputs(model.experts)

    with torch.no_grad():
        logits = model(clips)
        router_logits = model.router(clips)
    for handle in handles:
        handle.remove()

    assert model.top_k == 4
    for index in range(4):
        assert len(calls[index]) == 1
        assert torch.equal(calls[index][0], clips)
    weights = router_logits.softmax(dim=-1)
    with torch.no_grad():
        expected = sum(weights[:, index : index + 1] * model.experts[index](clips) for index in range(4))
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(model.aux_loss, torch.tensor(1.0))


def test_dense_moe_config_has_no_top_k():
    model = DenseVideoMoE(num_classes=5, num_experts=2)

    rebuilt = build_model(**model.config)

    assert "top_k" not in model.config
    assert isinstance(rebuilt, DenseVideoMoE)
    assert rebuilt.top_k == 2


# ----------------------------------------------------------------------------- transformer


def make_transformer(**kwargs):
    return MoEVideoTransformer(num_classes=5, clip_size=(8, 16, 16), tubelet_size=(2, 8, 8), **kwargs)


def test_transformer_router_logits_per_layer():
    torch.manual_seed(0)
    model = make_transformer().eval()
    recorded = []
    handles = [block.moe.router.register_forward_hook(lambda m, a, out: recorded.append(out)) for block in model.blocks]

    with torch.no_grad():
        logits = model(torch.rand(3, *TRANSFORMER_CLIP))
    for handle in handles:
        handle.remove()

    assert logits.shape == (3, 5)
    assert model.num_tokens == 16
    assert len(recorded) == 2
    assert [block.moe.top_k for block in model.blocks] == [2, 2]
    for router_logits in recorded:
        assert router_logits.shape == (3, 16, 4)


def test_transformer_moe_layer_matches_gate_weighted_sum():
    torch.manual_seed(0)
    layer = make_transformer().blocks[0].moe
    tokens = torch.randn(2, 5, 32)
    calls, handles = record_expert_inputs(layer.experts)

    with torch.no_grad():
        output = layer(tokens)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        rows = tokens.reshape(10, 32)
        router_logits = layer.router(rows)
        expected = gate_weighted_sum(router_logits, lambda index, row: layer.experts[index](rows[row]), 2, 10)

    assert output.shape == (2, 5, 32)
    assert torch.allclose(output.reshape(10, 32), expected, atol=1e-5)
    selected = router_logits.topk(2, dim=-1).indices
    for index, expert_calls in calls.items():
        expected_rows = (selected == index).any(dim=-1).nonzero(as_tuple=True)[0]
        if expected_rows.numel() == 0:
            assert expert_calls == []
        else:
            assert len(expert_calls) == 1
            assert torch.equal(expert_calls[0], rows[expected_rows])
    assert layer.aux_loss.shape == ()


def test_transformer_batch_matches_single_clips():
    torch.manual_seed(0)
    model = make_transformer().eval()
    clips = torch.rand(3, *TRANSFORMER_CLIP)

    with torch.no_grad():
        batch_logits = model(clips)
        single_logits = torch.cat([model(clips[index : index + 1]) for index in range(3)])

    assert torch.allclose(batch_logits, single_logits, atol=1e-5)


def test_transformer_gradient_reaches_routers():
    torch.manual_seed(0)
    model = make_transformer()

    F.cross_entropy(model(torch.rand(2, *TRANSFORMER_CLIP)), torch.tensor([0, 1])).backward()

    for block in model.blocks:
        assert block.moe.router.weight.grad.abs().sum() > 0


def test_transformer_rejects_wrong_clip_size():
    model = make_transformer()

    with pytest.raises(ValueError, match="clip_size"):
        model(torch.rand(1, 3, 16, 32, 32))


def test_transformer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tubelet_size"):
        MoEVideoTransformer(num_classes=5, clip_size=(8, 16, 16), tubelet_size=(3, 8, 8))
    with pytest.raises(ValueError, match="dim=30"):
        MoEVideoTransformer(num_classes=5, dim=30, num_heads=4)
    with pytest.raises(ValueError, match="top_k=3"):
        MoEVideoTransformer(num_classes=5, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="clip_size"):
        MoEVideoTransformer(num_classes=5, clip_size=(16, 32))


def test_transformer_config_rebuilds_model():
    model = make_transformer(depth=3)

    rebuilt = build_model(**json.loads(json.dumps(model.config)))

    assert isinstance(rebuilt, MoEVideoTransformer)
    assert rebuilt.config == model.config
    assert len(rebuilt.blocks) == 3


# ----------------------------------------------------------------------------- GFLOPs and registry


def test_count_gflops_sparse_moe_below_dense():
    torch.manual_seed(0)
    sparse = VideoMoE(num_classes=10, num_experts=4, top_k=1)
    dense = DenseVideoMoE(num_classes=10, num_experts=4)

    sparse_gflops = count_gflops(sparse, (3, 16, 32, 32))
    dense_gflops = count_gflops(dense, (3, 16, 32, 32))

    assert sparse_gflops > 0
    assert sparse_gflops <= 0.4 * dense_gflops


def test_count_gflops_counts_only_experts_that_run():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=10, num_experts=4, top_k=2)
    router_gflops = count_gflops(model.router, (3, 16, 32, 32))
    expert_gflops = count_gflops(model.experts[0], (3, 16, 32, 32))

    assert count_gflops(model, (3, 16, 32, 32)) == pytest.approx(router_gflops + 2 * expert_gflops, rel=1e-9)


def test_count_gflops_counts_transformer_attention():
    model = make_transformer()
    tokens, dim, hidden, experts, top_k, classes, depth = 16, 32, 64, 4, 2, 5, 2
    # Each multiply-add counts as 2 FLOPs. The tubelet embedding is a 3*2*8*8 -> 32 projection.
    per_block = (
        2 * tokens * dim * 3 * dim  # qkv projection
        + 2 * 2 * tokens * tokens * dim  # attention scores and weighted values
        + 2 * tokens * dim * dim  # output projection
        + 2 * tokens * dim * experts  # router
        + top_k * tokens * (2 * dim * hidden + 2 * hidden * dim)  # two experts per token
    )
    expected_flops = 2 * tokens * dim * (3 * 2 * 8 * 8) + depth * per_block + 2 * dim * classes

    assert count_gflops(model, TRANSFORMER_CLIP) * 1e9 == pytest.approx(expected_flops, rel=1e-9)


def test_count_gflops_restores_training_flags():
    model = VideoMoE(num_classes=5).train()
    model.experts[1].eval()

    count_gflops(model, SMALL_CLIP)

    assert model.training
    assert model.router.training
    assert not model.experts[1].training
    assert model.experts[0].training


def test_count_gflops_batch_shape_is_per_clip():
    model = build_backbone("tiny3d", num_classes=5)

    assert count_gflops(model, (2,) + SMALL_CLIP) == pytest.approx(count_gflops(model, SMALL_CLIP))


def test_count_gflops_rejects_bad_shape():
    with pytest.raises(ValueError, match="input_shape"):
        count_gflops(build_backbone("tiny3d", num_classes=5), (16, 32, 32))


def test_build_model_builds_each_kind():
    assert isinstance(build_model("moe", 5, expert="tiny3d", top_k=2), VideoMoE)
    assert isinstance(build_model("dense", 5), DenseVideoMoE)
    assert isinstance(build_model("transformer", 5), MoEVideoTransformer)
    assert build_model("tiny3d", 5, width=0.5).fc.in_features == 32


def test_build_model_unknown_name_lists_names():
    with pytest.raises(ValueError, match="moe, dense, transformer") as error:
        build_model("switch", 5)

    assert "name='switch'" in str(error.value)
    assert all(name in str(error.value) for name in MODEL_NAMES)


@pytest.mark.parametrize("kind", ["moe", "dense", "transformer"])
def test_model_copies_after_training_forward(kind):
    # aux_loss keeps the graph of the forward pass, which copy.deepcopy cannot copy.
    torch.manual_seed(0)
    if kind == "transformer":
        model = make_transformer()
    else:
        model = (VideoMoE if kind == "moe" else DenseVideoMoE)(num_classes=4, num_experts=4, router_width=4, expert_width=0.25)
    model.train()
    logits = model(torch.rand((2,) + SMALL_CLIP))

    copied = copy.deepcopy(model)

    layers = [module for module in model.modules() if getattr(module, "aux_loss", None) is not None]
    copied_layers = [module for module in copied.modules() if getattr(module, "aux_loss", None) is not None]
    assert len(layers) == len(copied_layers) >= 1
    for layer, copied_layer in zip(layers, copied_layers):
        assert not copied_layer.aux_loss.requires_grad
        assert torch.equal(copied_layer.aux_loss, layer.aux_loss.detach())
    # The original keeps its graph for the training loss.
    (logits.sum() + layers[0].aux_loss).backward()
