"""MoEInspector: discovery, records and clean-up on the MoE layouts users write."""

import pytest
import torch
from torch import nn

from moe_testing import ClipMoE, OddNamesMoE, TokenMoENet, TupleMoE, CLIP_SHAPE
from tlga_attacks import MoEHookError, MoEInspector, RouterNotFoundError


def clips(n=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + CLIP_SHAPE, generator=generator)


def count_hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_inspector_records_clip_level_moe():
    torch.manual_seed(0)
    model = ClipMoE(num_experts=4, top_k=1).eval()
    x = clips(5)

    with MoEInspector(model) as inspector:
        model(x)
        layers = inspector.layers

    assert len(layers) == 1
    layer = layers[0]
    assert layer.router_logits.shape == (5, 1, 4)
    assert layer.top_k == 1
    assert layer.selected_experts.shape == (5, 1, 1)
    assert torch.equal(layer.selected_experts[:, 0, 0], model.router(x).argmax(-1))
    expected_gates = model.router(x).softmax(-1).max(-1).values
    assert torch.allclose(layer.gate_weights[:, 0, 0], expected_gates)
    rows_seen = torch.cat([out.rows for out in layer.expert_outputs]).sort().values
    assert torch.equal(rows_seen, torch.arange(5))
    for out in layer.expert_outputs:
        assert torch.allclose(out.output, model.experts[out.expert](x[out.rows]), atol=1e-6)


def test_inspector_finds_user_names_through_paths():
    torch.manual_seed(0)
    model = OddNamesMoE().eval()

    with pytest.raises(RouterNotFoundError, match="routers="):
        MoEInspector(model)

    with MoEInspector(model, routers=["selector"], experts=["towers"]) as inspector:
        model(clips(4))
        layer = inspector.layers[0]

    assert layer.router_logits.shape == (4, 1, 2)
    assert len(layer.expert_outputs) >= 1
    assert all(out.rows is not None for out in layer.expert_outputs)


def test_inspector_rejects_unknown_path():
    model = OddNamesMoE()
    with pytest.raises(RouterNotFoundError, match="'selektor'"):
        MoEInspector(model, routers=["selektor"], experts=["towers"])


def test_inspector_rejects_mismatched_expert_paths():
    model = OddNamesMoE()
    with pytest.raises(ValueError, match="one experts container"):
        MoEInspector(model, routers=["selector"], experts=["towers", "towers"])


def test_inspector_handles_tuple_router_and_module_dict():
    torch.manual_seed(0)
    model = TupleMoE().eval()

    with MoEInspector(model) as inspector:
        model(clips(6))
        layer = inspector.layers[0]

    assert layer.router_logits.shape == (6, 1, 3)
    assert layer.top_k == 2
    assert {out.name for out in layer.expert_outputs} <= {
        "experts.motion", "experts.appearance", "experts.context"
    }
    for out in layer.expert_outputs:
        assert out.rows is not None
        selected = layer.selected_experts.reshape(6, -1)
        assert bool((selected[out.rows] == out.expert).any(-1).all())


def test_inspector_records_token_routed_layers():
    torch.manual_seed(0)
    model = TokenMoENet().eval()
    x = clips(2)

    with MoEInspector(model) as inspector:
        model(x)
        layers = inspector.layers

    units = (CLIP_SHAPE[1] // 2) * (CLIP_SHAPE[2] // 4) * (CLIP_SHAPE[3] // 4)
    assert len(layers) == 2
    for layer in layers:
        assert layer.router_logits.shape == (2, units, 4)
        assert layer.top_k == 2
        assert layer.selected_experts.shape == (2, units, 2)
        total_rows = sum(out.rows.numel() for out in layer.expert_outputs)
        assert total_rows == 2 * units * 2


def test_inspector_works_through_data_parallel():
    torch.manual_seed(0)
    model = nn.DataParallel(ClipMoE()).eval()

    with MoEInspector(model) as inspector:
        model(clips(3))
        layers = inspector.layers

    assert [spec.router_name for spec in inspector.specs] == ["router"]
    assert layers[0].router_logits.shape == (3, 1, 4)


def test_inspector_paths_work_through_data_parallel():
    model = nn.DataParallel(OddNamesMoE()).eval()
    with MoEInspector(model, routers=["selector"], experts=["towers"]) as inspector:
        model(clips(2))
        assert inspector.layers[0].router_logits.shape == (2, 1, 2)


def test_inspector_removes_hooks_on_exit():
    model = ClipMoE()
    before = count_hooks(model)

    with MoEInspector(model):
        assert count_hooks(model) > before

    assert count_hooks(model) == before


def test_inspector_removes_hooks_when_forward_raises():
    model = ClipMoE()
    before = count_hooks(model)

    with pytest.raises(RuntimeError):
        with MoEInspector(model):
            model(torch.rand(2, 5, 4, 16, 16))  # 5 channels: the router's conv raises

    assert count_hooks(model) == before


def test_inspector_error_names_search_when_no_router():
    model = nn.Sequential(nn.Conv3d(3, 4, 3), nn.Flatten(), nn.LazyLinear(4))
    with pytest.raises(RouterNotFoundError) as info:
        MoEInspector(model)
    message = str(info.value)
    assert "'router'" in message
    assert "'gate'" in message
    assert "experts=" in message


def test_inspector_layers_reset_each_pass():
    model = ClipMoE().eval()
    with MoEInspector(model) as inspector:
        model(clips(3))
        model(clips(2))
        assert inspector.layers[0].router_logits.shape[0] == 2
        assert inspector.passes == 2


def test_require_layers_raises_when_router_never_runs():
    class SkipsRouter(ClipMoE):
        def forward(self, x):
            return self.experts[0](x)

    model = SkipsRouter().eval()
    with MoEInspector(model) as inspector:
        model(clips(2))
        with pytest.raises(MoEHookError, match="no router logits"):
            inspector.require_layers()


def test_inspector_rejects_compiled_model():
    model = torch.compile(ClipMoE().eval(), backend="eager")
    with pytest.raises(MoEHookError, match="_orig_mod"):
        MoEInspector(model)
