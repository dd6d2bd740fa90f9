"""Image folders, image loading with clear errors, and the per-domain geometry table.

Decisions (README "Data"):

- Image files are ``*.png``, ``*.jpg``, ``*.jpeg`` (any case) directly in the folder, sorted by name.
- ``load_image`` returns a float tensor [3, H, W] in [-1, 1]. Non-RGB images that PIL can decode
  (grayscale ``L``, ``LA``, palette ``P``, ``RGBA``, ``CMYK``, 16-bit ``I;16``/``I``) are converted to
  RGB with a ``UserWarning`` naming the file (alpha is dropped, not composited). A file that cannot
  be decoded (corrupt, truncated, or not an image at all, e.g. text named ``.png``) raises one
  ``ValueError`` naming the file.
- ``scan_images`` decodes every file once and separates good files from bad ones with the reason,
  either skipping the bad ones or raising on the first.
- An EXIF orientation tag is applied (the pixels as a viewer shows them) with a ``UserWarning``
  naming the file; an image too large to decode safely (PIL's decompression-bomb limit) is unreadable.
- Resizing uses bilinear interpolation with antialiasing, on the [-1, 1] tensor.

FFHQ alignment (dlib landmarks) lives in ``e4e.align``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DomainSpec", "DOMAINS", "get_domain", "IMAGE_EXTENSIONS", "list_images", "load_image",
           "scan_images", "check_image_folder", "resize_image", "domain_transform", "ImageFolderDataset"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class DomainSpec:
    """Geometry of a domain: generator output size, W+ rows, encoder input (h, w), identity loss kind."""

    name: str
    gen_size: int
    n_latent: int
    enc_input: tuple[int, int]
    identity: str  # 'arcface' | 'moco' | 'domain'

    def __post_init__(self):
        if self.identity not in ("arcface", "moco", "domain"):
            raise ValueError(f"identity must be 'arcface', 'moco' or 'domain', got {self.identity!r}")
        expected = 2 * int(np.log2(self.gen_size)) - 2
        if self.n_latent != expected:
            raise ValueError(f"{self.name}: n_latent {self.n_latent} != 2*log2({self.gen_size})-2 = {expected}")


DOMAINS: dict[str, DomainSpec] = {
    d.name: d for d in (
        DomainSpec("ffhq", 1024, 18, (256, 256), "arcface"),
        DomainSpec("cars", 512, 16, (192, 256), "moco"),
        DomainSpec("horse", 256, 14, (256, 256), "moco"),
        DomainSpec("church", 256, 14, (256, 256), "moco"),
        DomainSpec("synth", 64, 10, (64, 64), "domain"),
    )
}


def get_domain(name: str) -> DomainSpec:
    """The ``DomainSpec`` called ``name``; a ``KeyError`` listing the known domains otherwise."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise KeyError(f"unknown domain {name!r}; known: {sorted(DOMAINS)}") from None


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


EXIF_ORIENTATION = 0x0112


def _decode(path: Path) -> np.ndarray:
    """Decode ``path`` to uint8 RGB [H, W, 3]; ValueError for unreadable files (an image too large to
    decode safely included), a warning on conversion. An EXIF orientation tag is applied (the image
    as a viewer shows it), with a warning naming the file."""
    notes = []
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
            if mode == "RGB":
                arr = np.asarray(im)
            else:
                if mode in ("I;16", "I;16B", "I;16L", "I"):
                    a = np.asarray(im).astype(np.float64)
                    scale = 65535.0 if a.max() > 255 else 255.0
                    im = Image.fromarray(np.clip(a / scale * 255 + 0.5, 0, 255).astype(np.uint8), "L")
                arr = np.asarray(im.convert("RGB"))
                notes.append(f"mode {mode} converted to RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    if notes:
        warnings.warn(f"{path}: {', '.join(notes)}", UserWarning, stacklevel=3)
    return arr


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Load one image as float [3, H, W] in [-1, 1], optionally resized to ``size`` (int or (h, w))."""
    arr = _decode(Path(path))
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    return resize_image(x, size) if size is not None else x


def resize_image(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of [3, H, W] or [B, 3, H, W] to ``size`` (int or (h, w))."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    batched = x.dim() == 4
    y = F.interpolate(x if batched else x[None], size=hw, mode="bilinear", align_corners=False, antialias=True)
    return y if batched else y[0]


def _scan(paths: list[Path], stop_on_error: bool = False):
    """Decode each of ``paths`` once: (good paths, [(bad path, error)], {name: [h, w]} of the good ones).
    Conversions of non-RGB files are not errors (their warnings are suppressed here). With
    ``stop_on_error`` the first unreadable file's ``ValueError`` is raised."""
    good, bad, sizes = [], [], {}
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                arr = _decode(p)
        except ValueError as e:
            if stop_on_error:
                raise
            bad.append((p, e))
        else:
            good.append(p)
            sizes[p.name] = list(arr.shape[:2])
    return good, bad, sizes


def scan_images(folder: str | os.PathLike, on_error: str = "skip") -> tuple[list[Path], list[tuple[Path, str]]]:
    """Decode every image of ``folder``: (good paths, [(bad path, reason)]).

    ``on_error='raise'`` raises the ``ValueError`` of the first bad file instead. Conversions of
    non-RGB files are not errors (their warnings are suppressed here)."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    good, bad, _ = _scan(list_images(folder), stop_on_error=on_error == "raise")
    return good, [(p, str(e)) for p, e in bad]


def check_image_folder(folder: str | os.PathLike, input_hw: tuple[int, int], strict_size: bool = False,
                       show: int = 3) -> list[Path]:
    """The start-up scan of a training / validation folder (before any step): every file is decoded
    once (``scan_images``' decoder). Unreadable files raise ``ValueError`` with their count and the
    first ``show`` paths. Images whose aspect ratio differs from ``input_hw`` (they would be distorted
    by the resize) or that are smaller than it (they would be upsampled) give one warning with their
    count, or a ``ValueError`` under ``strict_size``. A clean scan is remembered in
    ``<cache_root>/image_scans``, keyed by the folder and its files' names, sizes and mtimes, so an
    unchanged folder is not decoded again. Returns the paths (all readable)."""
    import hashlib
    import json

    from e4e.fileio import atomic_write, cache_root

    listing = list_images(folder)
    stats = [(p.name, st.st_size, st.st_mtime_ns) for p in listing for st in [p.stat()]]
    key = hashlib.sha256(json.dumps([str(Path(folder).resolve()), stats]).encode()).hexdigest()[:24]
    memo = cache_root() / "image_scans" / f"{key}.json"
    try:
        sizes = json.loads(memo.read_text())
    except (OSError, ValueError):
        sizes = None
    if not (isinstance(sizes, dict) and set(sizes) == {p.name for p in listing}):
        good, bad, sizes = _scan(listing)
        if bad:
            first = "; ".join(f"{p.name} ({str(e).split(': ', 1)[-1]})" for p, e in bad[:show])
            raise ValueError(f"{len(bad)} of {len(listing)} images in {folder} cannot be read, e.g. {first}")
        try:
            atomic_write(memo, lambda f: f.write(json.dumps(sizes)), mode="w")
        except OSError:  # a read-only cache only costs the next scan
            pass
    h0, w0 = input_hw
    odd = [(p, (h, w)) for p in listing for h, w in [sizes[p.name]] if h * w0 != w * h0 or h < h0 or w < w0]
    if odd:
        first = ", ".join(f"{p.name} {h}x{w}" for p, (h, w) in odd[:show])
        msg = (f"{len(odd)} of {len(listing)} images in {folder} are not {h0}x{w0}-shaped (another aspect ratio, "
               f"or smaller) and will be resized with distortion or upsampling, e.g. {first}")
        if strict_size:
            raise ValueError(msg + " (data.strict_size=true)")
        warnings.warn(msg, UserWarning, stacklevel=2)
    return listing


def domain_transform(domain: str | DomainSpec, target: str = "encoder") -> Callable[[torch.Tensor], torch.Tensor]:
    """Resize for a domain: ``target='encoder'`` -> encoder input (h, w); ``'generator'`` -> gen_size."""
    spec = get_domain(domain) if isinstance(domain, str) else domain
    if target not in ("encoder", "generator"):
        raise ValueError(f"target must be 'encoder' or 'generator', got {target!r}")
    size = spec.enc_input if target == "encoder" else (spec.gen_size, spec.gen_size)
    return lambda x: resize_image(x, size)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of a folder (sorted by name) as float [3, H, W] tensors in [-1, 1].

    ``size`` (int or (h, w)) resizes; otherwise ``domain`` (name or spec) resizes to its encoder
    input; ``transform`` is applied last. ``validate=True`` decodes every file up front and drops
    unreadable ones (listed in ``self.bad``); otherwise a bad file raises ``ValueError`` when read."""

    def __init__(self, root: str | os.PathLike, size: int | tuple[int, int] | None = None,
                 domain: str | DomainSpec | None = None, transform: Callable | None = None,
                 validate: bool = False):
        self.root = Path(root)
        if validate:
            self.paths, self.bad = scan_images(self.root, on_error="skip")
        else:
            self.paths, self.bad = list_images(self.root), []
        if not self.paths:
            raise FileNotFoundError(f"no readable {'/'.join(IMAGE_EXTENSIONS)} images in {self.root}")
        if size is None and domain is not None:
            spec = get_domain(domain) if isinstance(domain, str) else domain
            size = spec.enc_input
        self.size, self.transform = size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = load_image(self.paths[i], self.size)
        return self.transform(x) if self.transform is not None else x
