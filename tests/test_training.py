"""Fine-tuning: loss goes down, decoder-only freezes the encoder, checkpoints load, resume, bad input.

Runs on a very small random SAM (64 px input, depth 2) so each test takes about a second.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from reference_models import reference_sam

from napari_sam.errors import TrainingError
from napari_sam.model.build import build_from_config
from napari_sam.model.config import TINY
from napari_sam.training.trainer import TrainConfig, fine_tune, fine_tune_blocking, state_path

SMALL = replace(
    TINY,
    encoder=replace(TINY.encoder, img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                    out_chans=32, window_size=4, global_attn_indexes=(1,)),
    decoder=replace(TINY.decoder, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32),
)
FAST = TrainConfig(epochs=100, max_steps=4, learning_rate=2e-3, warmup_steps=1, objects_per_image=3,
                   n_interactions=2, checkpoint_every=1000, augment=False)


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_from_config(SMALL)


def blob_pairs(n: int = 2, size: int = 64, seed: int = 0):
    """Easy pairs: bright ellipses on a dark background, uint16, with their labels."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        lab = np.zeros((size, size), np.int32)
        for i, (r, c) in enumerate([(16, 16), (16, 46), (46, 30)], start=1):
            rr, cc = ellipse(r + rng.integers(-3, 4), c + rng.integers(-3, 4), 10, 8, lab.shape)
            lab[rr, cc] = i
        img = (lab > 0) * 2000.0 + 100 + rng.normal(0, 50, lab.shape)
        pairs.append((img.astype(np.uint16), lab))
    return pairs


def test_loss_decreases_on_trivial_data():
    from napari_sam.training.trainer import _load_sample, training_step_loss

    model = small_model()
    pairs = blob_pairs(1)
    cfg = replace(FAST, max_steps=25, n_interactions=1)
    rng = np.random.default_rng(0)
    samples = [_load_sample(pairs, 0, SMALL.img_size, False, rng)]

    def fixed_loss():
        with torch.no_grad():
            return float(training_step_loss(model, samples, cfg, step=10**6, device=torch.device("cpu")))

    before = fixed_loss()
    result = run(model, pairs, None, cfg)
    after = fixed_loss()
    assert result.completed and len(result.losses) == 25
    assert after < 0.7 * before, (before, after)


def run(model, pairs, out, cfg, **kw):
    import tempfile
    from pathlib import Path

    if out is None:
        out = Path(tempfile.mkdtemp()) / "m.pt"
    return fine_tune_blocking(model, pairs, out, cfg, **kw)


def test_decoder_only_freezes_encoder(tmp_path):
    model = small_model()
    enc0 = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    dec0 = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    run(model, blob_pairs(), tmp_path / "m.pt", replace(FAST, decoder_only=True))
    for k, v in model.image_encoder.state_dict().items():
        assert torch.equal(v, enc0[k]), k
    assert any(not torch.equal(v, dec0[k]) for k, v in model.mask_decoder.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # frozen only during training


def test_whole_model_training_changes_encoder(tmp_path):
    model = small_model()
    enc0 = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    run(model, blob_pairs(), tmp_path / "m.pt", replace(FAST, max_steps=2))
    assert any(not torch.equal(v, enc0[k]) for k, v in model.image_encoder.state_dict().items())


def _reference_small():
    return reference_sam(SMALL)


def test_checkpoint_loads_strictly_here_and_in_reference(tmp_path):
    from napari_sam.model import build_sam

    out = tmp_path / "m.pt"
    model = small_model()
    run(model, blob_pairs(), out, replace(FAST, max_steps=2, decoder_only=True))
    sd = torch.load(out, map_location="cpu", weights_only=True)
    assert type(sd) is dict and all(isinstance(v, torch.Tensor) for v in sd.values())
    ours = build_sam(SMALL, checkpoint=out)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    ref = _reference_small()
    ref.load_state_dict(sd, strict=True)
    # and the reference computes the same masks as ours with these weights
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        emb_ref = ref.image_encoder(ref.preprocess(x))
        emb_ours = ours.image_encoder(ours.preprocess(x))
    torch.testing.assert_close(emb_ours, emb_ref, atol=1e-4, rtol=1e-4)


def test_resume_continues_from_saved_step(tmp_path):
    pairs = blob_pairs(3)
    cfg = replace(FAST, max_steps=6)
    full = small_model()
    run(full, pairs, tmp_path / "full.pt", cfg)

    out = tmp_path / "part.pt"
    part = small_model()
    seen = []
    gen = fine_tune(part, pairs, out, cfg)
    for p in gen:
        seen.append(p.done)
        if p.done == 3:
            gen.close()  # like a cancelled or killed run after its last save
            break
    state = torch.load(state_path(out), map_location="cpu", weights_only=True)
    assert state["step"] == 3 and len(state["losses"]) == 3

    resumed = small_model(seed=99)  # different start: everything must come from the state file
    steps = []
    res = fine_tune_blocking(resumed, pairs, out, cfg, resume=True, callback=lambda p: steps.append(p.done))
    assert steps[0] == 3 and steps[-1] == 6 and res.completed and len(res.losses) == 6
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, full.state_dict()[k], atol=1e-5, rtol=1e-4, msg=k)


def test_existing_output_refused_and_untouched(tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"precious")
    with pytest.raises(TrainingError, match="exists"):
        run(small_model(), blob_pairs(), out, FAST)
    assert out.read_bytes() == b"precious"
    run(small_model(), blob_pairs(), out, replace(FAST, max_steps=1), overwrite=True)
    assert out.read_bytes() != b"precious"


@pytest.mark.parametrize(
    "image, labels, match",
    [
        (np.zeros((32, 32)), np.zeros((32, 32), np.int32), "no objects"),
        (np.zeros((32, 32)), np.ones((32, 30), np.int32), "differ"),
        (np.zeros((32, 32)), np.ones((32, 32), np.float32), "integers"),
        (np.zeros((32, 32)), np.ones((2, 32, 32), np.int32)[None], "expected"),
    ],
)
def test_bad_pairs_raise(image, labels, match):
    from napari_sam.training.datasets import pairs_from_arrays

    with pytest.raises(TrainingError, match=match):
        pairs_from_arrays(image, labels)


def test_pairs_from_arrays_accepts_stacks_and_lists():
    from napari_sam.training.datasets import pairs_from_arrays

    pairs = blob_pairs(3)
    imgs, labs = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    assert len(pairs_from_arrays(imgs, labs)) == 3
    assert len(pairs_from_arrays([p[0] for p in pairs], [p[1] for p in pairs])) == 3
    assert len(pairs_from_arrays(pairs[0][0], pairs[0][1])) == 1
    with pytest.raises(TrainingError, match="pair up"):
        pairs_from_arrays(imgs[:2], list(labs))


def test_folders(tmp_path):
    import tifffile

    from napari_sam.training.datasets import pairs_from_folders

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    with pytest.raises(TrainingError, match="No images"):
        pairs_from_folders(tmp_path / "img", tmp_path / "lab")
    with pytest.raises(TrainingError, match="does not exist"):
        pairs_from_folders(tmp_path / "nope", tmp_path / "lab")
    for i, (im, lb) in enumerate(blob_pairs(2)):
        tifffile.imwrite(tmp_path / "img" / f"a{i}.tif", im)
        tifffile.imwrite(tmp_path / "lab" / f"a{i}_labels.tif", lb)
    pairs = pairs_from_folders(tmp_path / "img", tmp_path / "lab")
    assert len(pairs) == 2 and pairs[0][1].max() == 3
    tifffile.imwrite(tmp_path / "img" / "orphan.tif", blob_pairs(1)[0][0])
    with pytest.raises(TrainingError, match="orphan"):
        pairs_from_folders(tmp_path / "img", tmp_path / "lab")


def test_folders_of_png_and_jpeg_images(tmp_path):
    from PIL import Image

    from napari_sam.training.datasets import pairs_from_folders

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    (im0, lb0), (im1, lb1) = blob_pairs(2)
    as8 = [(im / im.max() * 255).astype(np.uint8) for im in (im0, im1)]
    Image.fromarray(as8[0]).save(tmp_path / "img" / "a.png")
    Image.fromarray(as8[1]).save(tmp_path / "img" / "b.jpg", quality=95)
    Image.fromarray(lb0.astype(np.uint8)).save(tmp_path / "lab" / "a.png")
    Image.fromarray(lb1.astype(np.uint8)).save(tmp_path / "lab" / "b_labels.png")
    pairs = pairs_from_folders(tmp_path / "img", tmp_path / "lab")
    assert len(pairs) == 2
    np.testing.assert_array_equal(pairs[0][1], lb0)
    np.testing.assert_array_equal(pairs[1][1], lb1)


def test_empty_dataset_raises(tmp_path):
    with pytest.raises(TrainingError, match="empty"):
        run(small_model(), [], tmp_path / "m.pt", FAST)


def test_correction_points_fall_in_error_region():
    from napari_sam.training.prompt_sampling import correction_points, mask_boxes

    gt = torch.zeros(3, 16, 16, dtype=torch.bool)
    gt[:, 4:10, 4:10] = True
    pred = gt.clone()
    pred[0] = False  # all missed -> positive click inside the object
    pred[1, 12:15, 12:15] = True  # extra blob -> negative click in it
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        pts, labels = correction_points(pred, gt, gen)
        x, y = pts[:, 0].long(), pts[:, 1].long()
        assert labels[0] == 1 and gt[0, y[0], x[0]]
        assert labels[1] == 0 and 12 <= y[1] < 15 and 12 <= x[1] < 15
        assert labels[2] == 1 and gt[2, y[2], x[2]]  # perfect prediction: a positive point inside
    assert mask_boxes(gt)[0].tolist() == [4, 4, 9, 9]


def test_multimask_loss_takes_minimum():
    from napari_sam.training.losses import mask_loss

    tgt = torch.zeros(1, 1, 8, 8)
    tgt[..., 2:6, 2:6] = 1
    good = (tgt * 20 - 10)
    logits = torch.cat([-good, good, torch.zeros_like(good)], dim=1)
    per = mask_loss(logits, tgt)
    assert per.shape == (1, 3) and int(per.argmin()) == 1


def test_synthetic_samples_are_seeded_and_valid():
    from napari_sam.training.synthetic import synthetic_sample

    a, la = synthetic_sample((3, 1), (96, 96))
    b, lb = synthetic_sample((3, 1), (96, 96))
    c, _ = synthetic_sample((3, 2), (96, 96))
    assert a.dtype == np.uint16 and la.dtype == np.int32 and la.max() > 0
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert set(np.unique(la)) == set(range(la.max() + 1))  # labels are 0..N without gaps


def test_cli_train(tmp_path, tiny_checkpoint):
    import tifffile

    from napari_sam.cli import main
    from napari_sam.model import build_sam

    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    from napari_sam.training.synthetic import synthetic_sample

    img, lab = synthetic_sample(5, (128, 128))
    tifffile.imwrite(tmp_path / "img" / "x.tif", img)
    tifffile.imwrite(tmp_path / "lab" / "x.tif", lab)
    out = tmp_path / "ft.pt"
    args = ["train", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "--out", str(out),
            "--model", tiny_checkpoint, "--decoder-only", "--max-steps", "1", "--objects", "2",
            "--interactions", "2", "--device", "cpu"]
    assert main(args) == 0
    build_sam("tiny", checkpoint=out)
    before = out.read_bytes()
    assert main(args) == 2  # exists: refused
    assert out.read_bytes() == before
    assert main(args + ["--resume", "--max-steps", "2"]) == 0
    assert torch.load(state_path(out), weights_only=True)["step"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--images", str(empty), "--labels", str(tmp_path / "lab"), "--out",
                 str(tmp_path / "o.pt")]) == 2


def test_bf16_without_native_support_trains_in_fp32(tmp_path, monkeypatch):
    """bf16 autocast on a CPU without AVX512-BF16/AMX would be emulated (about 10x slower):
    training warns, runs in fp32 (no autocast at all) and records fp32 in its state."""
    import napari_sam.engine.models.device as dev

    monkeypatch.setattr(dev, "_cpu_has_fast_bf16", lambda: False)
    seen = []
    real_linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_linear(x, w, b)

    model = small_model()
    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    with pytest.warns(UserWarning, match="training in fp32"):
        run(model, blob_pairs(1), tmp_path / "m.pt", replace(FAST, max_steps=1, bf16=True))
    assert seen and not any(seen)  # no linear layer ran under autocast
    state = torch.load(state_path(tmp_path / "m.pt"), weights_only=True)
    assert state["config"]["bf16"] is False


def test_bf16_with_native_support_is_kept(monkeypatch):
    import napari_sam.engine.models.device as dev
    from napari_sam.training.trainer import _bf16_fallback

    monkeypatch.setattr(dev, "_cpu_has_fast_bf16", lambda: True)
    assert _bf16_fallback(torch.device("cpu")) is False
    monkeypatch.setattr(dev, "_cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="fp32"):
        assert _bf16_fallback(torch.device("cpu")) is True
