"""The instance decoder (model layer): parity with torch_em's UNETR as micro-sam configures it,
strict loading, and clear errors for files that do not fit.

torch_em (PyPI ``torch-em``, in the ``test`` extra) is the reference; the parity tests
skip with a reason when it is missing. Both sides get the same random weights, with
every tensor perturbed (BatchNorm statistics included) so no parameter is trivially zero.
"""

from __future__ import annotations

import pytest
import torch

from conftest import perturbed_state_dict
from napari_sam.errors import CheckpointError
from napari_sam.model.config import ViTConfig
from napari_sam.model.instance_decoder import (
    InstanceDecoder,
    InstanceDecoderConfig,
    build_instance_decoder,
    config_from_state,
    read_instance_decoder,
    to_image_frame,
)

#: A small SAM-style encoder: 256 px input, 16 px patches -> a 16 x 16 embedding of 256 channels.
SMALL = ViTConfig(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, out_chans=256,
                  window_size=4, global_attn_indexes=(1,))


def _decoder_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    sd = perturbed_state_dict(model, seed=seed, scale=0.05)
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = sd[k].abs() + 0.5  # a variance must stay positive
    return sd


@pytest.fixture(scope="session", params=[False, True], ids=["interpolate", "conv_transpose"])
def unetr_pair(request):
    """torch_em's UNETR (micro-sam's configuration) and our decoder with the same random weights."""
    pytest.importorskip("torch_em", reason="torch-em (the reference UNETR) is not installed")
    from segment_anything.modeling import ImageEncoderViT as MetaEncoder
    from torch_em.model import UNETR

    torch.manual_seed(0)
    meta_encoder = MetaEncoder(
        img_size=SMALL.img_size, patch_size=SMALL.patch_size, embed_dim=SMALL.embed_dim, depth=SMALL.depth,
        num_heads=SMALL.num_heads, out_chans=SMALL.out_chans, window_size=SMALL.window_size,
        global_attn_indexes=SMALL.global_attn_indexes, qkv_bias=True, use_rel_pos=True,
    )
    ref = UNETR(backbone="sam", encoder=meta_encoder, out_channels=3, use_sam_stats=True,
                final_activation="Sigmoid", use_skip_connection=False, resize_input=True,
                use_conv_transpose=request.param, initial_features=16)  # 16 keeps the forward fast
    ref.load_state_dict(_decoder_state(ref, seed=7))
    ref.eval()
    decoder_state = {k: v for k, v in ref.state_dict().items() if not k.startswith("encoder.")}
    ours = build_instance_decoder(decoder_state, embed_dim=256)
    return ref, ours, decoder_state


def _close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """Within ``rel`` x each channel's scale, and the reference is not trivially flat."""
    for c in range(ref.shape[1]):
        scale = float(ref[:, c].abs().max())
        assert float(ref[:, c].std()) > 1e-3, "reference map is flat: the comparison would prove nothing"
        err = float((ours[:, c] - ref[:, c]).abs().max())
        assert err <= rel * scale, f"channel {c}: max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("conv_transpose", [False, True])
def test_parameter_names_and_shapes_equal_micro_sams_decoder(conv_transpose):
    """The published configuration (64 initial features, 256-channel embeddings): same keys, same shapes."""
    pytest.importorskip("torch_em", reason="torch-em (the reference UNETR) is not installed")
    from segment_anything.modeling import ImageEncoderViT as MetaEncoder
    from torch_em.model import UNETR

    meta_encoder = MetaEncoder(img_size=256, patch_size=16, embed_dim=32, depth=1, num_heads=1, out_chans=256,
                               window_size=4, global_attn_indexes=(0,))
    ref = UNETR(backbone="sam", encoder=meta_encoder, out_channels=3, use_sam_stats=True,
                final_activation="Sigmoid", use_skip_connection=False, resize_input=True,
                use_conv_transpose=conv_transpose)
    published = {k: v for k, v in ref.state_dict().items() if not k.startswith("encoder.")}
    cfg = config_from_state(published)
    assert cfg == InstanceDecoderConfig(conv_transpose=conv_transpose)  # 256 in, 64 features, 3 maps
    own = InstanceDecoder(cfg).state_dict()
    assert list(own) == list(published)
    assert all(own[k].shape == v.shape for k, v in published.items())
    build_instance_decoder(published, embed_dim=256)  # strict load


def test_config_read_from_keys(unetr_pair):
    ref, ours, state = unetr_pair
    assert config_from_state(state).conv_transpose == ref.use_conv_transpose
    assert config_from_state(state).initial_features == 16


@pytest.mark.parametrize("original_size", [(256, 256), (200, 256), (97, 61), (700, 512)])
def test_decoder_matches_torch_em_on_embeddings(unetr_pair, original_size):
    """micro-sam's DecoderAdapter path: a precomputed embedding -> maps in the image frame."""
    ref, ours, _ = unetr_pair
    scale = 256 / max(original_size)
    input_size = (int(original_size[0] * scale + 0.5), int(original_size[1] * scale + 0.5))
    torch.manual_seed(sum(original_size))
    emb = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        expected = ref.decode((emb, None, None), input_size, original_size)
        got = to_image_frame(ours(emb), 256, input_size, original_size)
    assert got.shape == expected.shape == (1, 3, *original_size)
    _close(got, expected)


@pytest.mark.parametrize("shape", [(256, 256), (180, 256)])
def test_encoder_plus_decoder_matches_torch_em_forward(unetr_pair, shape):
    """The whole UNETR forward (normalise, resize, pad, encode, decode, crop, resize back).

    Through the reference encoder the maps agree within 1e-4 x scale. Through napari-sam's own
    encoder they agree within 2e-3 x scale: its fp32 embedding differs from Meta's by a few 1e-4
    of its scale on these perturbed random weights (a different summation order), and the
    decoder's normalisations carry that difference to the maps.
    """
    from napari_sam.model.image_encoder import ImageEncoderViT

    ref, ours, _ = unetr_pair
    encoder = ImageEncoderViT(SMALL)
    encoder.load_state_dict(ref.encoder.state_dict(), strict=True)
    encoder.eval()
    torch.manual_seed(1)
    image = torch.rand(1, 3, *shape) * 255
    with torch.no_grad():
        expected = ref(image)
        x, input_size = ref.preprocess(image)  # the same normalised, resized, padded pixels
        via_ref_encoder = to_image_frame(ours(ref.encoder(x)), 256, tuple(input_size), shape)
        via_our_encoder = to_image_frame(ours(encoder(x)), 256, tuple(input_size), shape)
    _close(via_ref_encoder, expected)
    _close(via_our_encoder, expected, rel=2e-3)


def test_logits_and_batch(unetr_pair):
    ref, ours, _ = unetr_pair
    emb = torch.randn(2, 256, 16, 16)
    with torch.no_grad():
        maps = ours(emb)
        logits = ours(emb, activate=False)
        single = ours(emb[1:])
    assert torch.allclose(torch.sigmoid(logits), maps, atol=1e-6)
    assert torch.allclose(single, maps[1:], atol=1e-5)


def test_decoder_file_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    dec = InstanceDecoder(InstanceDecoderConfig(embed_dim=128, initial_features=8))
    path = tmp_path / "dec.pt"
    torch.save(dec.state_dict(), path)
    loaded = read_instance_decoder(path, embed_dim=128)
    emb = torch.randn(1, 128, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded(emb), dec.eval()(emb))
    # micro-sam's combined checkpoint layout works too
    torch.save({"model_state": {}, "decoder_state": dec.state_dict()}, tmp_path / "combined.pt")
    assert read_instance_decoder(tmp_path / "combined.pt").config == dec.config


def test_decoder_for_another_encoder_is_refused(tmp_path):
    dec = InstanceDecoder(InstanceDecoderConfig(embed_dim=256, initial_features=8))
    path = tmp_path / "dec256.pt"
    torch.save(dec.state_dict(), path)
    with pytest.raises(CheckpointError, match="256-channel embeddings.*gives 128 channels"):
        read_instance_decoder(path, embed_dim=128)


def test_truncated_and_wrong_files_are_refused(tmp_path):
    dec = InstanceDecoder(InstanceDecoderConfig(initial_features=8))
    path = tmp_path / "dec.pt"
    torch.save(dec.state_dict(), path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_instance_decoder(tmp_path / "cut.pt")
    state = dec.state_dict()
    state.pop("deconv2.block.1.block.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: deconv2\.block\.1\.block\.weight(.|\n)*unexpected keys: extra"):
        read_instance_decoder(tmp_path / "keys.pt")
    from napari_sam.model import build_sam

    torch.save(build_sam("tiny").state_dict(), tmp_path / "sam.pt")
    with pytest.raises(CheckpointError, match="not an instance-decoder state dict"):
        read_instance_decoder(tmp_path / "sam.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_instance_decoder(tmp_path / "absent.pt")


def test_wrong_embedding_width_is_a_clear_error():
    dec = InstanceDecoder(InstanceDecoderConfig(embed_dim=256, initial_features=8))
    with pytest.raises(ValueError, match=r"reads \(B, 256, h, w\)"):
        dec(torch.zeros(1, 128, 4, 4))


def test_three_stage_decoder_for_8_px_patches(tmp_path):
    """tiny's decoder: one upsampling stage less, maps at 8 x the embedding grid; depth read back from keys."""
    cfg = InstanceDecoderConfig(embed_dim=32, initial_features=8, depth=3)
    dec = InstanceDecoder(cfg)
    assert cfg.features == (32, 16, 8)
    assert not any(k.startswith("deconv4.") for k in dec.state_dict())
    assert dec(torch.randn(2, 32, 12, 10)).shape == (2, 3, 96, 80)
    torch.save(dec.state_dict(), tmp_path / "d3.pt")
    back = read_instance_decoder(tmp_path / "d3.pt", embed_dim=32)
    assert back.config == cfg
    x = torch.randn(1, 32, 8, 8)
    assert torch.equal(back(x), dec.eval()(x))
    assert InstanceDecoderConfig().depth == 4 and InstanceDecoderConfig().features == (512, 256, 128, 64)
    with pytest.raises(ValueError, match="depth"):
        InstanceDecoderConfig(depth=1)


# --- inference speed-ups: the same maps, less work --------------------------------------------

def _as_written(decoder: InstanceDecoder, x: torch.Tensor) -> torch.Tensor:
    """The decoder's layers run literally as torch_em writes them (interpolate before the 1x1
    convolution, BatchNorm as a separate layer, standard layout): the reference for the fast path."""
    import torch.nn.functional as F

    def upsample(m, t):
        if hasattr(m, "conv"):
            return m.conv(F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False))
        return m.block(t)

    def up_block(m, t):
        sampler, conv, norm, relu = m.block
        return relu(norm(conv(upsample(sampler, t))))

    skips, z = [], x
    for i in range(1, decoder.config.depth + 1):
        z = up_block(getattr(decoder, f"deconv{i}"), z)
        skips.append(z)
    h = decoder.base.block(x)
    for block, sampler, skip in zip(decoder.decoder.blocks, decoder.decoder.samplers, skips[:-1]):
        h = upsample(sampler, h)
        c = (skip.shape[1] - h.shape[1]) // 2
        h = block.block(torch.cat([h, skip[:, c:c + h.shape[1]]], dim=1))
    h = decoder.decoder_head.block(torch.cat([upsample(decoder.deconv_out, h), skips[-1]], dim=1))
    return decoder.out_conv(h)


@pytest.mark.parametrize("conv_transpose", [False, True])
def test_fast_inference_path_equals_the_layers_as_written(conv_transpose):
    torch.manual_seed(3)
    decoder = InstanceDecoder(InstanceDecoderConfig(embed_dim=32, initial_features=8, conv_transpose=conv_transpose))
    decoder.load_state_dict(_decoder_state(decoder, seed=5))
    decoder.eval()
    calls = []
    for name, m in decoder.named_modules():
        upsampler_conv = isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and name != "out_conv"
        if upsampler_conv or isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda mod, args: calls.append((type(mod).__name__, args[0].shape[-1])))
    x = torch.randn(1, 32, 9, 7)
    with torch.inference_mode():
        fast = decoder(x, activate=False)
        calls_fast = list(calls)
        ref = _as_written(decoder, x)
    assert fast.shape == ref.shape == (1, 3, 144, 112) and fast.is_contiguous()
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    # BatchNorm is folded into its convolution, and every 1x1 convolution runs before the x2 upsampling
    assert not any(name == "BatchNorm2d" for name, _ in calls_fast)
    if not conv_transpose:
        assert {w for _, w in calls_fast} == {7, 14, 28, 56}  # the upsamplers' input widths, never 2x them
    decoder.train()
    calls.clear()
    decoder(x)
    assert any(name == "BatchNorm2d" for name, _ in calls)  # training runs the layers as written


def test_maps_already_in_the_image_frame_are_not_resized():
    maps = torch.rand(1, 3, 256, 256)
    same = to_image_frame(maps, 256, (256, 256), (256, 256))
    assert same.data_ptr() == maps.data_ptr() and torch.equal(same, maps)
    cropped = to_image_frame(maps, 256, (256, 192), (256, 192))
    assert cropped.data_ptr() == maps.data_ptr() and torch.equal(cropped, maps[..., :192])
    resized = to_image_frame(maps, 256, (256, 192), (512, 384))
    assert resized.shape == (1, 3, 512, 384)
