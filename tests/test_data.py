"""e4e.data: loading with clear errors, non-RGB conversion, folder scanning, domain table."""
import numpy as np
import pytest
import torch
from PIL import Image

from e4e.data import (DOMAINS, DomainSpec, ImageFolderDataset, domain_transform, get_domain, list_images,
                      load_image, scan_images)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a_rgb.png")
    Image.fromarray(rgb).save(tmp_path / "b_rgb.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "c_gray.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "d_rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "e_palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "h_gray16.png")
    (tmp_path / "f_text.png").write_text("this is not an image\n")
    good = (tmp_path / "a_rgb.png").read_bytes()
    (tmp_path / "g_truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_load_rgb_range_and_values(folder):
    x = load_image(folder / "a_rgb.png")
    assert x.shape == (3, 20, 24) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    ref = np.array(Image.open(folder / "a_rgb.png"))
    assert torch.allclose(x, torch.from_numpy(ref).permute(2, 0, 1).float() / 127.5 - 1)
    assert load_image(folder / "a_rgb.png", size=(10, 12)).shape == (3, 10, 12)


@pytest.mark.parametrize("name", ["c_gray.png", "d_rgba.png", "e_palette.png", "h_gray16.png"])
def test_non_rgb_converted_with_warning(folder, name):
    with pytest.warns(UserWarning, match="converted to RGB"):
        x = load_image(folder / name)
    assert x.shape == (3, 20, 24)


def test_gray_converts_to_equal_channels(folder):
    with pytest.warns(UserWarning):
        x = load_image(folder / "c_gray.png")
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    with pytest.warns(UserWarning):
        x16 = load_image(folder / "h_gray16.png")
    assert torch.equal(x16, x)  # 16-bit values scaled to 8 bits


@pytest.mark.parametrize("name", ["f_text.png", "g_truncated.png"])
def test_unreadable_raises_valueerror_naming_file(folder, name):
    with pytest.raises(ValueError, match=name):
        load_image(folder / name)


def test_scan_images_skip_and_raise(folder):
    assert [p.name for p in list_images(folder)][:2] == ["a_rgb.png", "b_rgb.jpg"]
    good, bad = scan_images(folder, on_error="skip")
    assert [p.name for p in good] == ["a_rgb.png", "b_rgb.jpg", "c_gray.png", "d_rgba.png", "e_palette.png",
                                      "h_gray16.png"]
    assert [p.name for p, _ in bad] == ["f_text.png", "g_truncated.png"]
    assert all("cannot read image" in reason for _, reason in bad)
    with pytest.raises(ValueError, match="f_text.png"):
        scan_images(folder, on_error="raise")
    with pytest.raises(ValueError, match="on_error"):
        scan_images(folder, on_error="ignore")


def test_image_folder_dataset(folder):
    ds = ImageFolderDataset(folder, size=16, validate=True)
    assert len(ds) == 6 and [p.name for p, _ in ds.bad] == ["f_text.png", "g_truncated.png"]
    assert ds[0].shape == (3, 16, 16)
    raw = ImageFolderDataset(folder, domain="synth")
    assert len(raw) == 8 and raw[0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="f_text.png"):
        raw[5]
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(folder / "missing")


def test_domain_table():
    assert {k: (d.gen_size, d.n_latent) for k, d in DOMAINS.items()} == {
        "ffhq": (1024, 18), "cars": (512, 16), "horse": (256, 14), "church": (256, 14), "synth": (64, 10)}
    assert get_domain("cars").enc_input == (192, 256) and get_domain("ffhq").identity == "arcface"
    assert get_domain("synth").identity == "domain"
    assert domain_transform("cars")(torch.zeros(3, 300, 400)).shape == (3, 192, 256)
    assert domain_transform("ffhq", "generator")(torch.zeros(3, 64, 64)).shape == (3, 1024, 1024)
    with pytest.raises(KeyError, match="known"):
        get_domain("cats")
    with pytest.raises(ValueError):
        DomainSpec("bad", 64, 12, (64, 64), "domain")


def test_start_up_scan_finds_bad_files_odd_sizes_and_rescans_changed_folders(tmp_path):
    import warnings

    import numpy as np
    from PIL import Image

    from e4e.data import check_image_folder

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 50 * i, np.uint8)).save(d / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [p.name for p in check_image_folder(d, (64, 64))] == ["0.png", "1.png", "2.png"]
        assert len(check_image_folder(d, (64, 64))) == 3          # the memo of the clean scan
    Image.fromarray(np.zeros((37, 100, 3), np.uint8)).save(d / "3.png")   # another aspect ratio
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "4.png")    # smaller than the input
    for _ in range(2):                                             # decoded, then from the memo
        with pytest.warns(UserWarning, match=r"2 of 5 images .* 3\.png 37x100, 4\.png 32x32"):
            check_image_folder(d, (64, 64))
    with pytest.raises(ValueError, match="strict_size"):
        check_image_folder(d, (64, 64), strict_size=True)
    good = (d / "0.png").read_bytes()
    (d / "0.png").write_bytes(good[:50])                           # the folder changed: scanned again
    (d / "5.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 of 6 images .* cannot be read, e\.g\. 0\.png"):
        check_image_folder(d, (64, 64))
