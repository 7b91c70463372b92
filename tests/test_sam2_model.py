"""SAM 2.1 model layer: parameter names and shapes equal Meta's, safe strict loading, same numbers."""

from __future__ import annotations

import pytest
import torch

from napari_sam.errors import CheckpointError, UnknownModelError
from napari_sam.model.sam2 import SAM2_PRESETS, build_sam2, guess_sam2_type



@pytest.fixture(scope="module")
def ref():
    """tests/sam2_reference.py; skips when Meta's sam2 is not installed."""
    import sam2_reference

    return sam2_reference


@pytest.mark.parametrize(
    "name", [n if "tiny" in n else pytest.param(n, marks=pytest.mark.slow) for n in SAM2_PRESETS]
)
def test_parameter_names_and_shapes_equal_meta(name, ref):
    """Meta's model built from its own sam2.1 config has exactly our keys and shapes (what the .pt files hold)."""
    reference = ref.build_reference(name)
    with torch.device("meta"):  # ours needs no memory for this
        mine = build_sam2(name)
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
    assert sorted(set(theirs) ^ set(ours)) == []
    assert {k for k in theirs if theirs[k] != ours[k]} == set()


@pytest.fixture(scope="module")
def sam2_state():
    from sam2_state import perturbed_sam2_state

    return perturbed_sam2_state("sam2.1_hiera_tiny")


@pytest.fixture(scope="module")
def sam2_file(tmp_path_factory, sam2_state):
    """A checkpoint laid out as Meta publishes them: {"model": state_dict}."""
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": sam2_state}, path)
    return path


def test_load_published_layout_strictly(sam2_file, sam2_state):
    model = build_sam2("sam2.1_hiera_tiny", sam2_file)
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sam2_state.items())
    # the size is read from the tensors when no type is named
    assert build_sam2(None, sam2_file).cfg.name == "sam2.1_hiera_tiny"
    assert guess_sam2_type(sam2_state) == "sam2.1_hiera_tiny"


def test_refuses_pickled_objects(tmp_path, sam2_state):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": sam2_state, "config": object()}, path)
    with pytest.raises(CheckpointError, match="never pickled code"):
        build_sam2("sam2.1_hiera_tiny", path)


def test_wrong_size_is_named(sam2_file):
    with pytest.raises(CheckpointError, match="looks like 'sam2.1_hiera_tiny'") as e:
        build_sam2("sam2.1_hiera_small", sam2_file)
    assert "missing keys" in str(e.value)


def test_sam1_file_given_as_sam2(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="SAM 1 model .*'tiny'"):
        build_sam2("sam2.1_hiera_tiny", tiny_checkpoint)
    with pytest.raises(CheckpointError, match="SAM 1 model"):
        build_sam2(None, tiny_checkpoint)


def test_sam2_file_given_as_sam1(sam2_file):
    from napari_sam.model import build_sam

    with pytest.raises(CheckpointError, match="SAM 2.1 checkpoint"):
        build_sam("vit_b", sam2_file)


def test_unknown_preset_and_bad_image_size():
    with pytest.raises(UnknownModelError, match="sam2.1_hiera_tiny"):
        build_sam2("hiera_huge")
    with pytest.raises(ValueError, match="multiple of 32"):
        build_sam2("hiera_tiny", image_size=100)


def test_modules_match_reference_numerically(sam2_state, ref):
    """Image features, SAM heads (multimask and stable single mask) and the memory encoder, at 256 px."""
    size = 256
    theirs = ref.build_reference("sam2.1_hiera_tiny", sam2_state, ref.IMAGE_OVERRIDES, image_size=size)
    ours = build_sam2("sam2.1_hiera_tiny", sam2_state, image_size=size)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        r = theirs.forward_image(image)
        m = ours.forward_image(image)
        for a, b in zip(r["backbone_fpn"], [*m.high_res, m.embed]):
            torch.testing.assert_close(b, a, atol=1e-5 * a.abs().max().item(), rtol=0)
        torch.testing.assert_close(m.pos, r["vision_pos_enc"][-1])
        points = {"point_coords": torch.tensor([[[70.0, 90.0], [150.0, 40.0]]]),
                  "point_labels": torch.tensor([[1, 0]], dtype=torch.int32)}
        for multimask in (True, False):
            a = theirs._forward_sam_heads(m.embed, points, None, m.high_res, multimask_output=multimask)
            b = ours.forward_sam_heads(m.embed, points, None, m.high_res, multimask_output=multimask)
            for x, y in zip(a, (b.low_res_multimasks, b.high_res_multimasks, b.ious, b.low_res_masks,
                                b.high_res_masks, b.obj_ptr, b.object_score_logits)):
                torch.testing.assert_close(y, x, atol=1e-4 * max(1.0, x.abs().max().item()), rtol=0)
        mem_a, pos_a = theirs._encode_new_memory([m.embed.flatten(2).permute(2, 0, 1)], [(16, 16)],
                                                 a[4], a[6], False)
        mem_b, pos_b = ours.encode_new_memory(m.embed, b.high_res_masks, b.object_score_logits, False)
        torch.testing.assert_close(mem_b, mem_a, atol=1e-4, rtol=0)
        torch.testing.assert_close(pos_b, pos_a[0])


def test_load_model_recognises_sam2_files(sam2_file, tiny_checkpoint):
    import napari_sam
    from napari_sam.model.sam2 import SAM2Model

    model = napari_sam.load_model(sam2_file, device="cpu")
    assert isinstance(model, SAM2Model) and model.cfg.name == "sam2.1_hiera_tiny"
    assert isinstance(napari_sam.load_model(sam2_file, device="cpu", model_type="hiera_tiny"), SAM2Model)
    with pytest.raises(CheckpointError, match="SAM 2.1 checkpoint"):
        napari_sam.load_model(sam2_file, device="cpu", model_type="vit_b")
    with pytest.raises(CheckpointError, match="SAM 1 model"):
        napari_sam.load_model(tiny_checkpoint, device="cpu", model_type="sam2.1_hiera_tiny")


def test_a_file_may_record_its_input_size(tmp_path, sam2_file, sam2_state):
    """{"model": ..., "image_size": 256} loads at 256 px; Meta's layout keeps 1024; a bad size is refused."""
    import napari_sam

    path = tmp_path / "sam2.1_hiera_tiny_256.pt"
    torch.save({"model": sam2_state, "image_size": 256}, path)
    for model in (napari_sam.load_model(path, device="cpu"), build_sam2(None, path)):
        assert model.cfg.name == "sam2.1_hiera_tiny" and model.image_size == model.cfg.image_size == 256
    assert build_sam2(None, path, image_size=512).image_size == 512  # an explicit size wins
    assert napari_sam.load_model(sam2_file, device="cpu").image_size == 1024
    for bad in (100, 0, "256", 256.0, True):
        torch.save({"model": sam2_state, "image_size": bad}, path)
        with pytest.raises(CheckpointError, match="multiple of 32"):
            napari_sam.load_model(path, device="cpu")
        with pytest.raises(CheckpointError, match="multiple of 32"):
            build_sam2(None, path)


def test_zoo_lists_the_four_sam2_checkpoints_apart(sam2_file, monkeypatch):
    import napari_sam
    from napari_sam.engine.models import zoo
    from napari_sam.model.sam2 import SAM2Model

    sam2 = [e for e in zoo.list_models(families=("sam2",))]
    assert [e.name for e in sam2] == list(SAM2_PRESETS)
    for e in sam2:
        assert e.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{e.name}.pt"
        assert e.known_hash.startswith("sha256:") and len(e.known_hash) == 7 + 64
        assert e.family == "sam2" and e.architecture == e.name
    # the SAM 1 code paths (widgets) keep seeing only what they can run
    assert all(e.family == "sam" for e in zoo.list_models())
    # a zoo name loads the SAM 2.1 architecture (the download is replaced by the random file)
    monkeypatch.setattr(zoo, "weights_path", lambda name, progressbar=True: sam2_file)
    model = napari_sam.load_model("sam2.1_hiera_tiny", device="cpu")
    assert isinstance(model, SAM2Model)
    with pytest.raises(CheckpointError, match="does not fit"):
        napari_sam.load_model("sam2.1_hiera_small", device="cpu")


def test_sam1_tools_refuse_a_sam2_model_clearly(sam2_file):
    """A SAM 2.1 file loaded where SAM 1 is run (SamPredictor, Segmenter, the widgets) gets a clear error."""
    import napari_sam
    from napari_sam.errors import InvalidParameterError

    model = napari_sam.load_model(sam2_file, device="cpu")
    with pytest.raises(InvalidParameterError, match="SAM2ImagePredictor"):
        napari_sam.SamPredictor(model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_sam2_weights_are_refused(tmp_path, sam2_state, bad):
    """A SAM 2.1 file with NaN/inf weights is refused at load, as a SAM 1 file is (issue 14, case 6)."""
    import napari_sam

    state = {k: v.clone() for k, v in sam2_state.items()}
    name = next(k for k in state if k.startswith("sam_mask_decoder.") and state[k].is_floating_point())
    state[name].view(-1)[0] = bad
    path = tmp_path / "diverged_sam2.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=rf"NaN or infinite.*{name}"):
        napari_sam.load_model(path, device="cpu")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        build_sam2("sam2.1_hiera_tiny", path)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        build_sam2(None, state)
