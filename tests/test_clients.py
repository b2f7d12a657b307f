"""PATNet in other people's code: inference mode, tracing, exporters, OpenVINO, timm's head and feature options."""
import warnings

import pytest
import timm
import torch

import patnet  # noqa: F401

from conftest import rel_err

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_inference_mode_does_not_poison_training():
    """Validating under inference_mode (Lightning's default) must leave every PATNet trainable at that size."""
    a = timm.create_model("patnet_t0", num_classes=3).eval()
    with torch.inference_mode():
        a(X)
    for model in (a, timm.create_model("patnet_t0", num_classes=3)):
        model.train()
        model(torch.randn(2, 3, 64, 64)).sum().backward()
        assert model.stages[3].blocks[0].mixer.rel_pos.bias_table.grad is not None


def test_position_index_is_per_module_and_never_saved():
    model = timm.create_model("patnet_t0", num_classes=3).eval()
    with torch.no_grad():
        model(X)
    rel = model.stages[3].blocks[0].mixer.rel_pos
    assert rel.index.shape == (4, 4) and rel.index_size == (2, 2)
    assert not any(k.endswith("rel_pos.index") for k in model.state_dict())
    model.to(torch.float64)
    assert rel.index.dtype == torch.int32  # an index stays an index
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 64, dtype=torch.float64))
    assert rel.index_size == (3, 2)


@pytest.mark.parametrize("fused", [False, True])
def test_jit_trace_passes_its_check(fused):
    model = timm.create_model("patnet_t1", num_classes=3).eval()
    if fused:
        from timm.utils import reparameterize_model

        model = reparameterize_model(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(X)  # a cached index from an eager call must not leak into the trace
        traced = torch.jit.trace(model, X, check_trace=True)  # raises when the graph differs across invocations
        y = torch.randn(2, 3, 64, 64)
        assert rel_err(traced(y), model(y)) < 1e-5


def test_openvino_converts_the_pytorch_module():
    import openvino as ov  # the 'openvino' extra, part of .[dev]
    model = timm.create_model("patnet_t0", num_classes=3).eval()
    compiled = ov.compile_model(ov.convert_model(model, example_input=X), "CPU",
                                {"INFERENCE_PRECISION_HINT": "f32"})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(compiled(X.numpy())[0]), model(X)) < 1e-4


def test_dynamo_onnx_export_keeps_the_batch_dynamic(tmp_path):
    import onnx
    import onnxruntime as ort

    model = timm.create_model("patnet_t0", num_classes=3).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (X,), str(path), dynamo=True, dynamic_shapes=({0: "batch"},), verbose=False)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: y.numpy()})[0]), model(y)) < 1e-4


def test_torch_export_with_dynamic_batch():
    from torch.export import Dim

    model = timm.create_model("patnet_t0", num_classes=3).eval()
    # torch.export specialises any size-1 example dimension (FasterNet alike), so the example has batch 2.
    ep = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: Dim("batch", max=64)},))
    y = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ep.module()(y), model(y)) < 1e-5


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "catavgmax"])
def test_every_global_pool_works(pool):
    model = timm.create_model("patnet_t0", num_classes=3, global_pool=pool).eval()
    assert model(X).shape == (1, 3)
    assert model.forward_head(model.forward_features(X), pre_logits=True).shape == (1, model.head_hidden_size)


def test_reset_classifier_keeps_dtype_device_and_refuses_a_wider_pool():
    model = timm.create_model("patnet_t0", num_classes=3).to(torch.bfloat16)
    model.reset_classifier(5, "max")
    assert model.classifier.weight.dtype == torch.bfloat16 and model.classifier.out_features == 5
    with pytest.raises(ValueError, match="create the model with global_pool='catavgmax'"):
        model.reset_classifier(5, "catavgmax")


def test_factory_kwargs_reach_every_layer():
    model = timm.create_model("patnet_t1", num_classes=3, device="meta", dtype=torch.float64)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_feature_getter_scripts():
    feats = timm.create_model("patnet_t0", features_only=True, feature_cls="getter").eval()
    scripted = torch.jit.script(feats)
    with torch.no_grad():
        for a, b in zip(scripted(X), feats(X)):
            torch.testing.assert_close(a, b)


def test_training_on_batch_one_says_what_to_do():
    model = timm.create_model("patnet_t0", num_classes=3).train()
    with pytest.raises(ValueError, match="cannot train on a batch of 1"):
        model(X)
    from timm.layers import freeze_batch_norm_2d

    frozen = freeze_batch_norm_2d(model)  # detection's setting: frozen BatchNorm takes any batch
    frozen(X).sum().backward()


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_dilates_the_last_stages(output_stride):
    model = timm.create_model("patnet_t0", num_classes=3, output_stride=output_stride).eval()
    x = torch.randn(2, 3, 64, 96)
    feats = model.forward_intermediates(x, intermediates_only=True)
    expected = [min(r, output_stride) for r in (4, 8, 16, 32)]
    assert [info["reduction"] for info in model.feature_info] == expected
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // r, 96 // r) for r in expected]
    # Same weights as the stride-32 model (only strides, paddings and dilations change).
    dense = timm.create_model("patnet_t0", num_classes=3)
    dense.load_state_dict(model.state_dict())
    assert model.stages[3].blocks[0].mixer.conv.dilation == (32 // output_stride,) * 2
    from timm.utils import reparameterize_model

    with torch.no_grad():
        assert rel_err(reparameterize_model(model)(x), model(x)) < 1e-5  # the inference form keeps the dilation


def test_output_stride_outside_the_stage_strides_is_refused():
    with pytest.raises(ValueError, match=r"output_stride must be one of \[8, 16, 32\]"):
        timm.create_model("patnet_t0", output_stride=4)


# segmentation_models_pytorch builds timm encoders as 'tu-NAME' (features_only, output_stride for DeepLab/PAN).
@pytest.mark.parametrize("arch", ["Unet", "FPN", "DeepLabV3Plus"])
@pytest.mark.parametrize("size", [(128, 128), (96, 160)])
def test_smp_models_train_on_patnet(arch, size):
    smp = pytest.importorskip("segmentation_models_pytorch")  # in .[dev]; a user without it gets the skip reason
    model = getattr(smp, arch)("tu-patnet_t0", encoder_weights=None, classes=4).train()
    x = torch.randn(2, 3, *size)
    y = model(x)
    assert y.shape == (2, 4, *size)
    y.square().mean().backward()
    assert model.encoder.model.stem.conv.weight.grad is not None


@pytest.mark.parametrize("arch", ["DeepLabV3Plus", "PAN"])
def test_smp_dilated_models_at_256_validate_under_inference_mode_then_train(arch):
    # DeepLabV3+ and PAN ask timm for output_stride=16; smp's own testers validate under inference_mode.
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = getattr(smp, arch)("tu-patnet_t0", encoder_weights=None, classes=3)
    assert model.encoder.model.feature_info.reduction()[-1] == 16
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        assert model.eval()(x).shape == (2, 3, 256, 256)
    model.train()(x).square().mean().backward()
    assert model.encoder.model.stages_3.downsample.conv.weight.grad is not None


def test_torchvision_faster_rcnn_on_a_hand_built_patnet_fpn():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    body = timm.create_model("patnet_t0", features_only=True, out_indices=(1, 2, 3))
    backbone = BackboneWithFPN(body, return_layers={"stages_1": "0", "stages_2": "1", "stages_3": "2"},
                               in_channels_list=body.feature_info.channels(), out_channels=32)
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    model = FasterRCNN(backbone, num_classes=3, min_size=128, max_size=160, rpn_anchor_generator=anchors).train()
    images = [torch.rand(3, 128, 160), torch.rand(3, 140, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([2])}]
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert body.stem.conv.weight.grad is not None
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == 2 and detections[0]["boxes"].shape[-1] == 4
