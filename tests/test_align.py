"""FFHQ alignment and dlib identity on a real photo shipped by scikit-image (the astronaut)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("dlib")

from e4e.align import Aligner, FaceNotFoundError, align_face, ffhq_quad  # noqa: E402


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()  # 512x512 RGB, one frontal face


@pytest.fixture(scope="module")
def aligner():
    return Aligner(output_size=256)


def test_ffhq_quad_geometry():
    lm = np.zeros((68, 2))
    lm[36:42] = [100, 100]
    lm[42:48] = [200, 100]
    lm[48], lm[54] = [120, 200], [180, 200]
    quad, qsize = ffhq_quad(lm)
    # eye distance 100, eye-to-mouth 100: half side = max(2*100, 1.8*100) = 200, centre 10 px below the eyes
    assert qsize == pytest.approx(400)
    np.testing.assert_allclose(quad.mean(0), [150, 110])
    np.testing.assert_allclose(quad[0], [-50, -90])


def test_align_astronaut(astronaut, aligner):
    out = aligner(astronaut)
    assert out.size == (256, 256) and out.mode == "RGB"
    lm = aligner.landmarks(np.asarray(out))  # re-detect in the aligned face
    eye_l, eye_r = lm[36:42].mean(0) / 256, lm[42:48].mean(0) / 256
    np.testing.assert_allclose(eye_l, [0.375, 0.47], atol=0.05)
    np.testing.assert_allclose(eye_r, [0.625, 0.47], atol=0.05)
    big = align_face(astronaut, output_size=128, transform_size=256)
    assert big.size == (128, 128)


def test_align_undoes_rotation(astronaut, aligner):
    from PIL import Image

    out = aligner(Image.fromarray(astronaut).rotate(20, resample=Image.BILINEAR))
    lm = aligner.landmarks(np.asarray(out))
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    assert abs(eye_r[1] - eye_l[1]) < 0.02 * 256  # eyes level again
    np.testing.assert_allclose((eye_l + eye_r) / 2 / 256, [0.5, 0.47], atol=0.04)


def test_no_face(aligner):
    with pytest.raises(FaceNotFoundError):
        aligner(np.full((128, 128, 3), 127, np.uint8))


def test_id_dlib_on_astronaut(astronaut, aligner):
    from e4e.identity import build_identity
    from metrics import EvalContext, get_metric

    face = torch.from_numpy(np.asarray(aligner(astronaut)).copy()).permute(2, 0, 1).float() / 127.5 - 1
    blank = torch.zeros_like(face)
    x = torch.stack([face, blank])
    net = build_identity("dlib")
    f = net(x)
    assert f.shape == (2, 128) and torch.isfinite(f[0]).all() and torch.isnan(f[1]).all()

    class Identity(torch.nn.Module):  # "inverts" perfectly, blurring slightly
        def invert(self, images):
            return images

        def generate(self, w, noise_mode="const"):
            return torch.nn.functional.avg_pool2d(w, 3, 1, 1)

    res = get_metric("id_dlib")(EvalContext(Identity(), x, batch_size=2))
    assert res.values["id_dlib_n_faces"] == 1
    assert res.values["id_dlib"] > 0.95
    assert np.isnan(res.per_image["id_dlib"][1])
