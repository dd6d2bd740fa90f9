"""FFHQ face alignment (Karras et al. 2019, the FFHQ data set recipe; pSp/e4e align real faces the
same way before inversion) with dlib's frontal face detector and 68-landmark predictor.

The predictor ``shape_predictor_68_face_landmarks.dat`` is opened directly from the directory of the
``face-recognition-models`` package (the package itself is not imported: its ``pkg_resources``
import fails on recent setuptools).

Recipe (landmarks -> oriented square -> resampling):
1. eye centres = means of landmarks 36-41 and 42-47, mouth corners = landmarks 48 and 54;
2. x axis = eye-to-eye vector minus the eye-to-mouth vector rotated by 90 degrees, normalised and
   scaled to max(2.0 * |eye-to-eye|, 1.8 * |eye-to-mouth|); y axis = x rotated by 90 degrees; centre =
   eye midpoint + 0.1 * eye-to-mouth; the crop is the square centre +- x +- y;
3. shrink the image when the square is much larger than the output, crop around the square with a
   border of 10% of its size, pad with reflection where it leaves the image (blurring and
   desaturating the padded band towards the median colour), resample the square with a bilinear quad
   transform at ``transform_size`` and downsample with a Lanczos filter to ``output_size``.
In the output the eye centres are near (0.375, 0.47) and (0.625, 0.47) of the width/height.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["FaceNotFoundError", "Aligner", "align_face", "face_landmarks", "ffhq_quad", "load_predictor",
           "face_recognition_models_dir", "dlib_model_file"]


class FaceNotFoundError(ValueError):
    """dlib found no face in the image."""


def load_predictor():
    """(frontal face detector, 68-landmark predictor) from the face-recognition-models files
    (``MissingExtraError`` naming the ``[faces]`` extra when dlib or the models are not installed)."""
    from e4e.extras import require_extra

    dlib = require_extra("dlib", "faces", "FFHQ face alignment (dlib)")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_model_file("shape_predictor_68_face_landmarks.dat")))


def face_recognition_models_dir() -> Path:
    """``.../face_recognition_models/models`` located without importing the package (its
    ``pkg_resources`` import fails on recent setuptools); ``MissingExtraError`` naming the ``[faces]``
    extra when it is not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        from e4e.extras import MissingExtraError, install_hint

        raise MissingExtraError("dlib's landmark and face-recognition models need the optional [faces] "
                                f"dependencies: 'face_recognition_models' is not installed; {install_hint('faces')}")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def dlib_model_file(name: str) -> Path:
    path = face_recognition_models_dir() / name
    if not path.is_file():
        from e4e.weights import WeightsMissingError

        raise WeightsMissingError(f"{path} is missing (shipped by the face-recognition-models package)")
    return path


def _as_rgb_array(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    return np.ascontiguousarray(arr[..., :3])


def face_landmarks(image: Any, detector=None, predictor=None, upsample: int = 1) -> np.ndarray:
    """68 (x, y) landmarks of the largest detected face; FaceNotFoundError if none."""
    if detector is None or predictor is None:
        detector, predictor = load_predictor()
    arr = _as_rgb_array(image)
    dets = detector(arr, upsample)
    if len(dets) == 0:
        raise FaceNotFoundError("dlib's frontal face detector found no face")
    det = max(dets, key=lambda r: r.width() * r.height())
    shape = predictor(arr, det)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def ffhq_quad(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ crop square (4 corners, clockwise from top-left) and its side length."""
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_mid, eye_vec = (eye_l + eye_r) / 2, eye_r - eye_l
    mouth_mid = (lm[48] + lm[54]) / 2
    mouth_vec = mouth_mid - eye_mid
    x = eye_vec + np.array([mouth_vec[1], -mouth_vec[0]])  # eye-to-eye minus eye-to-mouth rotated by +90 deg
    x = x / np.hypot(*x) * max(np.hypot(*eye_vec) * 2.0, np.hypot(*mouth_vec) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_mid + 0.1 * mouth_vec
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def _pad_reflect_blend(img: Image.Image, pad: np.ndarray, qsize: float) -> Image.Image:
    """Reflect-pad (left, top, right, bottom) and fade the padding into a blurred, median-coloured band."""
    from scipy.ndimage import gaussian_filter

    arr = np.pad(np.asarray(img, dtype=np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
    h, w = arr.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    fx = np.minimum(xx / max(pad[0], 1), (w - 1 - xx) / max(pad[2], 1)).astype(np.float32)
    fy = np.minimum(yy / max(pad[1], 1), (h - 1 - yy) / max(pad[3], 1)).astype(np.float32)
    mask = np.maximum(1.0 - fx, 1.0 - fy)[..., None]
    sigma = qsize * 0.02
    arr += (gaussian_filter(arr, [sigma, sigma, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")


def warp_quad(img: Image.Image, quad: np.ndarray, qsize: float, output_size: int, transform_size: int,
              enable_padding: bool = True) -> Image.Image:
    quad = quad.copy()
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        img = img.resize((int(round(img.size[0] / shrink)), int(round(img.size[1] / shrink))), Image.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(round(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, img.size[0]), min(hi[1] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[:2]
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = np.array([max(-lo[0] + border, 0), max(-lo[1] + border, 0),
                    max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0)])
    if enable_padding and pad.max() > border - 4:
        pad = np.maximum(pad, int(round(qsize * 0.3)))
        img = _pad_reflect_blend(img, pad, qsize)
        quad += pad[:2]
    img = img.transform((transform_size, transform_size), Image.QUAD, tuple((quad + 0.5).flatten()), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    return img


@dataclass
class Aligner:
    """Reusable aligner (loads dlib's models once). ``transform_size`` defaults to 4 x output_size
    (FFHQ: 4096 for 1024)."""

    output_size: int = 256
    transform_size: int | None = None
    enable_padding: bool = True
    upsample: int = 1

    def __post_init__(self):
        self._models = None

    def landmarks(self, image) -> np.ndarray:
        if self._models is None:
            self._models = load_predictor()
        return face_landmarks(image, *self._models, upsample=self.upsample)

    def __call__(self, image) -> Image.Image:
        arr = _as_rgb_array(image)
        quad, qsize = ffhq_quad(self.landmarks(arr))
        ts = self.transform_size or 4 * self.output_size
        return warp_quad(Image.fromarray(arr), quad, qsize, self.output_size, ts, self.enable_padding)


def align_face(image, predictor=None, output_size: int = 256, transform_size: int | None = None,
               enable_padding: bool = True, detector=None) -> Image.Image:
    """FFHQ-aligned RGB face crop (PIL, ``output_size`` square) of a PIL image or uint8 array.
    ``predictor``/``detector``: preloaded dlib models (default: the face-recognition-models files)."""
    aligner = Aligner(output_size, transform_size, enable_padding)
    if predictor is not None or detector is not None:
        det, pred = load_predictor() if predictor is None or detector is None else (None, None)
        aligner._models = (detector or det, predictor or pred)
    return aligner(image)
