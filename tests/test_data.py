import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from fixedhead import data
from fixedhead.data import pipeline
from fixedhead.errors import UserError


def test_digits_split_is_fixed_and_stratified():
    train, test = data.load("digits", split="train"), data.load("digits", split="test")
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 16, 16)
    assert len(train) + len(test) == 1797 and len(test) == 540
    assert torch.equal(data.load("digits", split="test").labels, test.labels)
    assert train.images.max() == 255 and train.classes == [str(d) for d in range(10)]


def test_imagefolder_reads_the_pixels_and_classes(image_folder):
    train = data.load("imagefolder", image_folder, "train")
    assert train.classes == ["cat", "dog", "owl"]
    assert train.images.shape == (18, 3, 16, 16)
    first = np.asarray(Image.open(image_folder / "train" / "cat" / "000.png").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(train.images[0].numpy(), first)
    assert train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6


def test_imagefolder_second_load_comes_from_the_cache(image_folder, monkeypatch):
    first = data.load("imagefolder", image_folder, "train")
    monkeypatch.setattr(data, "decode_images", lambda *a, **k: pytest.fail("decoded again"))
    second = data.load("imagefolder", image_folder, "train")
    assert torch.equal(first.images, second.images)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(image_folder / "train" / "cat" / "000.png")  # changed source
    monkeypatch.undo()
    third = data.load("imagefolder", image_folder, "train")
    assert third.images[0, :, 0, 0].tolist() == [1, 2, 3]


def test_imagefolder_resizes_when_asked(image_folder):
    assert data.load("imagefolder", image_folder, "test", image_size=24).images.shape == (18, 3, 24, 24)


@pytest.mark.parametrize("breakage,match", [
    (lambda root: None, "does not exist"),
    (lambda root: (root / "train").mkdir(parents=True), "has no class folders"),
    (lambda root: (root / "train" / "cat").mkdir(parents=True), "holds no images"),
])
def test_imagefolder_missing_or_empty(tmp_path, breakage, match):
    root = tmp_path / "broken"
    breakage(root)
    with pytest.raises(UserError, match=match):
        data.load("imagefolder", root, "train")


def test_unreadable_image_is_named(image_folder):
    bad = image_folder / "train" / "dog" / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*bad.png"):
        data.load("imagefolder", image_folder, "train")


def test_test_class_unknown_to_training_is_named(image_folder):
    (image_folder / "test" / "yak").mkdir()
    Image.new("RGB", (16, 16)).save(image_folder / "test" / "yak" / "a.png")
    with pytest.raises(UserError, match="yak is not a training class"):
        data.load("imagefolder", image_folder, "test")


def test_mixed_sizes_need_image_size(image_folder):
    Image.new("RGB", (20, 20)).save(image_folder / "train" / "owl" / "big.png")
    with pytest.raises(UserError, match="set data.image_size"):
        data.load("imagefolder", image_folder, "train")


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="digits, imagefolder"):
        data.load("imagenet")
    with pytest.raises(UserError, match="train, test"):
        data.load("digits", split="val")


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = pipeline.channel_stats(images)
    x = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-8)


def test_random_crop_equals_per_image_pad_and_slice():
    images = torch.randint(0, 256, (6, 3, 10, 12), dtype=torch.uint8)
    out = pipeline.random_crop(images, 3, torch.Generator().manual_seed(0))
    dy, dx = torch.randint(0, 7, (2, 6), generator=torch.Generator().manual_seed(0))
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)))
    for n in range(6):
        expected = padded[n, :, dy[n]:dy[n] + 10, dx[n]:dx[n] + 12]
        assert np.array_equal(out[n].numpy(), expected)


def test_reflect_padded_crop_equals_numpy_reflect_pad_and_slice():
    """data.crop_padding_mode=reflect (airbench's translations): numpy's 'reflect' (edge not repeated), as torch's."""
    images = torch.randint(0, 256, (5, 3, 9, 7), dtype=torch.uint8)
    out = pipeline.random_crop(images, 2, torch.Generator().manual_seed(4), "reflect")
    dy, dx = torch.randint(0, 5, (2, 5), generator=torch.Generator().manual_seed(4))
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    for n in range(5):
        assert np.array_equal(out[n].numpy(), padded[n, :, dy[n]:dy[n] + 9, dx[n]:dx[n] + 7])
    assert not torch.equal(out, pipeline.random_crop(images, 2, torch.Generator().manual_seed(4)))


def test_loader_epochs_are_reproducible_and_cover_everything():
    images = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(37)
    loader = pipeline.BatchLoader(images, labels, 10, [0.5] * 3, [0.25] * 3, shuffle=True, crop_padding=2, flip=True)
    a = [(x.clone(), y.clone()) for x, y in loader.epoch(seed=1, epoch=3)]
    b = list(loader.epoch(seed=1, epoch=3))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert sorted(torch.cat([y for _, y in a]).tolist()) == list(range(37))
    plain = pipeline.BatchLoader(images, labels, 10, [0.5] * 3, [0.25] * 3)
    x, _ = next(plain.epoch())
    torch.testing.assert_close(x, (images[:10].float() / 255 - 0.5) / 0.25)


def _mirrored_per_image(loader, images, seed, epoch, world=1):
    """{image index: whether the epoch showed it mirrored}, read off the batches (no crop)."""
    seen = {}
    for rank in range(world):
        for x, y in loader.epoch(seed=seed, epoch=epoch, rank=rank, world=world):
            raw = (x * 0.25 + 0.5) * 255  # undo the normalisation
            for view, label in zip(raw, y.tolist()):
                original = images[label].float()
                assert torch.allclose(view, original, atol=1e-3) or torch.allclose(view, original.flip(2), atol=1e-3)
                seen[label] = not torch.allclose(view, original, atol=1e-3)
    return seen


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    images = torch.randint(0, 256, (40, 3, 6, 6), dtype=torch.uint8)
    loader = pipeline.BatchLoader(images, torch.arange(40), 8, [0.5] * 3, [0.25] * 3, shuffle=True, flip=True,
                                  alternating_flip=True)
    epochs = [_mirrored_per_image(loader, images, seed=2, epoch=e) for e in range(4)]
    assert all(len(e) == 40 for e in epochs)
    assert 10 <= sum(epochs[0].values()) <= 30  # a random half to start from
    for before, after in zip(epochs, epochs[1:]):
        assert all(after[i] != before[i] for i in range(40))
    assert _mirrored_per_image(loader, images, seed=2, epoch=1, world=2) == epochs[1]  # same under torchrun
    assert _mirrored_per_image(loader, images, seed=3, epoch=0) != epochs[0]  # the seed decides where it starts
    random_flips = pipeline.BatchLoader(images, torch.arange(40), 8, [0.5] * 3, [0.25] * 3, shuffle=True, flip=True)
    both = [_mirrored_per_image(random_flips, images, seed=2, epoch=e) for e in range(4)]
    assert any(both[e][i] == both[e + 1][i] for e in range(3) for i in range(40))  # random: repeats happen


def test_low_res_epochs_show_the_images_as_pil_scales_them_down_then_full_size():
    """Progressive resizing: the first data.low_res_epochs epochs see each (augmented) image scaled down as
    PIL's bilinear resize does (its downscaling antialiases), later epochs the full side."""
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    loader = pipeline.BatchLoader(images, torch.arange(6), 6, [0.0] * 3, [1 / 255] * 3, low_res=(24, 2))
    shapes = [tuple(next(loader.epoch(epoch=e))[0].shape) for e in range(3)]
    assert shapes == [(6, 3, 24, 24), (6, 3, 24, 24), (6, 3, 32, 32)]
    small, _ = next(loader.epoch(epoch=1))
    reference = np.stack([np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((24, 24), Image.BILINEAR))
                          for im in images]).transpose(0, 3, 1, 2)
    assert np.abs(small.numpy() - reference).max() <= 1.0 + 1e-3  # PIL rounds to whole grey levels; float32 scaling
    full, _ = next(loader.epoch(epoch=2))
    assert torch.equal(full, images.float())


@pytest.mark.parametrize("layer,match", [
    ({"data.low_res_size": 12}, "data.low_res_size and data.low_res_epochs go together"),
    ({"data.low_res_epochs": 2}, "go together"),
    ({"data.low_res_size": 16, "data.low_res_epochs": 1}, r"must be below their side \(16 px\), got 16"),
    ({"data.low_res_size": 2, "data.low_res_epochs": 1}, r"data.low_res_size must be an integer in \[4, 1_024\]"),
    ({"data.low_res_size": 4, "data.low_res_epochs": 3, "train.epochs": 3}, r"must be below train.epochs \(3\)"),
    ({"data.low_res_size": 4, "data.low_res_epochs": 3, "train.epochs": 2.5}, r"below train.epochs \(2.5\).*got 3"),
])
def test_bad_low_res_settings_are_one_line_errors(layer, match):
    from fixedhead.config import make_config
    from fixedhead.data.loaders import prepare

    with pytest.raises(UserError, match=match):
        config = make_config({"data.name": "digits"}, layer)
        prepare(config.data, seed=0, batch_size=64, eval_batch_size=64, device="cpu")


def test_validation_split_is_stratified_and_disjoint():
    labels = torch.arange(100) % 4
    train, val = pipeline.split_validation(100, 0.2, labels, seed=0)
    assert len(val) == 20 and set(train.tolist()).isdisjoint(val.tolist())
    assert torch.bincount(labels[val]).tolist() == [5, 5, 5, 5]


def test_an_image_folder_with_val_instead_of_test_scores_val_and_says_so(tmp_path, capsys):
    from fixedhead.cli import main

    root = write_image_folder(tmp_path / "images", splits=("train", "val"))
    assert main(["train", "--data", "imagefolder", "--data-dir", str(root), "--arch", "fastnet-small", "--epochs",
                 "1", "--batch-size", "6", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "has no test/; its val/ is the test split" in captured.err
    assert "(18 images" in captured.out  # the 3 x 6 images of val/
    (root / "val").rename(root / "elsewhere")
    assert main(["train", "--data", "imagefolder", "--data-dir", str(root), "--epochs", "1",
                 "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    assert "test/ (or" in capsys.readouterr().err
