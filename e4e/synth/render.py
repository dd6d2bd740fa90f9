"""Deterministic, vectorised renderer of simple frontal-ish faces with ground-truth attributes.

Every image is a pure function of its attribute vector: ``render(attrs)`` draws a batch of faces
with soft (anti-aliased) signed-distance shapes on a ``supersample``-times larger canvas and
box-filters it down to ``size`` x ``size`` RGB uint8. Because every shape edge is a linear ramp of
one high-resolution pixel, pixels change continuously with the attributes, which a GAN can learn
and an attribute network can regress.

Coordinates: ``u`` runs left to right and ``v`` top to bottom, both in [-1, 1] over the image.
The head is a fixed, aligned ellipse (as in aligned FFHQ crops); yaw moves the inner features on a
cylinder model (the far eye foreshortens, the nose moves further than the eyes) and narrows the
far side of the head outline. Positive yaw turns the face toward the viewer's right.

Attribute distribution (``sample_attributes``): see ``ATTRIBUTE_SPECS`` for ranges; correlations
are deliberate so that edits can leak as they do in real faces:

- age ~ Beta(1.6, 2.2); hair greys with age in the renderer itself (not a separate attribute) and
  the hairline recedes;
- eyes_open ~ Beta(5, 1.4) - 0.25 age - 0.15 max(smile, 0) (clipped): older and smiling faces
  squint;
- smile ~ N(0.15, 0.5) clipped to [-1, 1];
- glasses present with probability 0.12 + 0.45 age, then opacity ~ U(0.55, 1), else 0;
- hair_length ~ U(0, 1) - 0.3 age (clipped): older faces have shorter hair on average;
- yaw ~ N(0, 0.45), light ~ U(-1, 1), bg_gradient ~ U(-1, 1); the hues and skin tone ~ U(0, 1).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ATTRIBUTES", "ATTRIBUTE_SPECS", "attr_index", "sample_attributes", "render",
           "default_attributes"]

#: name -> (low, high, description). The order of this dict is the column order of attribute arrays.
ATTRIBUTE_SPECS: dict[str, tuple[float, float, str]] = {
    "yaw": (-1.0, 1.0, "head turn; +1 ~ 26 deg toward the viewer's right: features shift, far side narrows"),
    "smile": (-1.0, 1.0, "mouth curvature; -1 frown, 0 neutral line, +1 open smile with teeth"),
    "age": (0.0, 1.0, "0 young .. 1 old: grey hair, receding hairline, forehead/cheek/eye wrinkles"),
    "eyes_open": (0.0, 1.0, "eyelid opening; 0 closed (a lid line) .. 1 wide open"),
    "glasses": (0.0, 1.0, "opacity of round glasses (frames, bridge, tinted lenses); 0 = none"),
    "hair_hue": (0.0, 1.0, "hair hue, mapped to hue 0..0.75 of the colour wheel (red..yellow..blue)"),
    "hair_length": (0.0, 1.0, "0 short cap .. 1 hair to the shoulders"),
    "skin_tone": (0.0, 1.0, "0 light .. 1 dark skin"),
    "bg_hue": (0.0, 1.0, "background hue, mapped to hue 0..0.8 of the colour wheel (the shirt takes the opposite hue)"),
    "bg_gradient": (-1.0, 1.0, "vertical background gradient; +1 light top / dark bottom, -1 reverse"),
    "light": (-1.0, 1.0, "key-light direction; -1 from the viewer's left, +1 from the right"),
}
ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_SPECS)


def attr_index(name: str) -> int:
    """Column of attribute ``name`` in attribute arrays."""
    return ATTRIBUTES.index(name)


def default_attributes(n: int = 1) -> np.ndarray:
    """A neutral face (frontal, slight smile, young, open eyes, no glasses) repeated ``n`` times."""
    base = dict(yaw=0.0, smile=0.2, age=0.2, eyes_open=0.85, glasses=0.0, hair_hue=0.08,
                hair_length=0.5, skin_tone=0.3, bg_hue=0.55, bg_gradient=0.3, light=0.3)
    return np.tile(np.array([base[k] for k in ATTRIBUTES], np.float32), (n, 1))


def sample_attributes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sample ``n`` attribute vectors [n, K] float32 with the correlations of the module docstring."""
    age = rng.beta(1.6, 2.2, n)
    smile = np.clip(rng.normal(0.15, 0.5, n), -1, 1)
    eyes_open = np.clip(rng.beta(5.0, 1.4, n) - 0.25 * age - 0.15 * np.maximum(smile, 0), 0, 1)
    has_glasses = rng.random(n) < 0.12 + 0.45 * age
    glasses = np.where(has_glasses, rng.uniform(0.55, 1.0, n), 0.0)
    hair_length = np.clip(rng.random(n) - 0.3 * age + 0.1, 0, 1)
    cols = dict(
        yaw=np.clip(rng.normal(0.0, 0.45, n), -1, 1), smile=smile, age=age, eyes_open=eyes_open,
        glasses=glasses, hair_hue=rng.random(n), hair_length=hair_length, skin_tone=rng.random(n),
        bg_hue=rng.random(n), bg_gradient=rng.uniform(-1, 1, n), light=rng.uniform(-1, 1, n),
    )
    return np.stack([cols[k] for k in ATTRIBUTES], 1).astype(np.float32)


# ----------------------------------------------------------------------------- drawing helpers

def _hsv(h, s, v):
    """HSV -> RGB for tensors of shape [B]; returns [B, 3]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], -1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _lerp(a, b, t):
    return a + (b - a) * t


def _smoothstep(e0, e1, x):
    t = torch.clamp((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


class _Canvas:
    """A batch of RGB canvases [B, 3, H, W] plus pixel-centre coordinates u, v.

    The image spans [-EXTENT, EXTENT] in both coordinates. ``window`` returns a canvas over a fixed
    rectangle that shares pixels with its parent, so small features cost only their window."""

    def __init__(self, batch: int, res: int, img=None, u=None, v=None, rows=None, cols=None):
        if img is None:
            c = ((torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1) * EXTENT
            v, u = c[None, :, None], c[None, None, :]  # [1, H, 1], [1, 1, W]
            img = torch.zeros(batch, 3, res, res)
            rows = cols = slice(0, res)
        self.img, self.u, self.v, self.res = img, u, v, res
        self.rows, self.cols = rows, cols
        self.px = 2.0 * EXTENT / res  # one high-resolution pixel in normalised units

    def window(self, u0: float, u1: float, v0: float, v1: float) -> "_Canvas":
        """Sub-canvas covering [u0, u1] x [v0, v1] (normalised coordinates, clipped to the image)."""
        def idx(x):
            return min(self.res, max(0, int(math.floor((x / EXTENT + 1) / 2 * self.res))))
        r, c = slice(idx(v0), idx(v1) + 1), slice(idx(u0), idx(u1) + 1)
        return _Canvas(0, self.res, self.img[:, :, r, c], self.u[:, :, c], self.v[:, r, :], r, c)

    def crop(self, t):
        """Crop a full-canvas tensor [..., H, W] to this window."""
        return t[..., self.rows, self.cols]

    def cov(self, d):
        """Coverage of a shape from its signed distance (negative inside): a one-pixel ramp."""
        return torch.clamp(0.5 - d / self.px, 0, 1)

    def paint(self, alpha, color):
        """Composite ``color`` ([B,3] or [B,3,h,w]) over the canvas with coverage ``alpha`` [B,h,w]."""
        if color.dim() == 2:
            color = color[:, :, None, None]
        self.img.lerp_(color.expand_as(self.img), alpha[:, None])


def _col(x):
    """[B] -> [B, 1, 1] for broadcasting against the coordinate grids."""
    return x[:, None, None]


def _ellipse(u, v, cu, cv, a, b):
    """Approximate signed distance to an axis-aligned ellipse (exact on the axes)."""
    du, dv = (u - cu) / a, (v - cv) / b
    r = torch.sqrt(du * du + dv * dv + 1e-12)
    return (r - 1) * torch.minimum(torch.as_tensor(a), torch.as_tensor(b))


def _segment(u, v, au, av, bu, bv):
    """Distance to the segment a-b (all endpoints broadcastable tensors)."""
    pu, pv, du, dv = u - au, v - av, bu - au, bv - av
    t = torch.clamp((pu * du + pv * dv) / (du * du + dv * dv + 1e-12), 0, 1)
    return torch.sqrt((pu - t * du) ** 2 + (pv - t * dv) ** 2 + 1e-12)


# ----------------------------------------------------------------------------- the face model

EXTENT = 0.86  # the image spans [-EXTENT, EXTENT]: a tight, FFHQ-like crop
HEAD_CV, HEAD_A, HEAD_B = -0.02, 0.46, 0.60  # head ellipse centre (v) and half axes
MAX_TURN = math.radians(26)  # |yaw| = 1


def _project(x0, theta, radius=HEAD_A):
    """Cylinder model: frontal offset x0 -> (projected u offset, horizontal foreshortening)."""
    phi0 = torch.asin(torch.clamp(x0 / radius, -0.999, 0.999))
    phi = phi0 + theta
    return radius * torch.sin(phi), torch.clamp(torch.cos(phi) / torch.cos(phi0), 0.05, 2.0)


@torch.no_grad()
def _draw(at: dict[str, torch.Tensor], res: int) -> torch.Tensor:
    """Draw a batch (attribute name -> [B] tensor) at ``res`` pixels: float RGB [B, 3, res, res] in [0, 1]."""
    B = at["yaw"].shape[0]
    cv = _Canvas(B, res)
    u, v = cv.u, cv.v
    yaw, smile, age = at["yaw"], at["smile"], at["age"]
    theta = yaw * MAX_TURN
    grey = _smoothstep(torch.tensor(0.3), torch.tensor(1.0), age)

    # light: direction on the horizontal axis, slightly from above and in front
    lx, ly, lz = 0.85 * at["light"], torch.full_like(yaw, -0.35), torch.full_like(yaw, 0.75)
    ln = torch.sqrt(lx * lx + ly * ly + lz * lz)
    lx, ly, lz = lx / ln, ly / ln, lz / ln

    # --- background: hue + vertical gradient + a soft vignette
    bg = _hsv(at["bg_hue"] * 0.8, torch.full_like(yaw, 0.38), torch.full_like(yaw, 0.78))
    grad = 1 - 0.32 * _col(at["bg_gradient"]) * v - 0.12 * (u * u + v * v)
    cv.img = bg[:, :, None, None] * grad[:, None]

    # --- colours
    skin = _lerp(torch.tensor([0.97, 0.80, 0.68]), torch.tensor([0.42, 0.27, 0.18]), at["skin_tone"][:, None])
    hair = _hsv(at["hair_hue"] * 0.75, torch.full_like(yaw, 0.62), 0.30 + 0.30 * at["hair_hue"])
    hair = _lerp(hair, torch.tensor([0.80, 0.80, 0.82]), grey[:, None])
    shirt = _hsv((at["bg_hue"] * 0.8 + 0.5) % 1.0, torch.full_like(yaw, 0.35), torch.full_like(yaw, 0.38))

    # head outline: far side narrower, near side slightly wider; slight shift with the turn
    s = _col(torch.sin(theta))
    hcu = 0.04 * s
    a_right = HEAD_A * (1 - 0.28 * torch.clamp(s, min=0) + 0.1 * torch.clamp(-s, min=0))
    a_left = HEAD_A * (1 - 0.28 * torch.clamp(-s, min=0) + 0.1 * torch.clamp(s, min=0))
    a_side = torch.where(u - hcu > 0, a_right, a_left)

    # shading factor from the head ellipse normal (Lambert + ambient), shared by skin and hair
    nx = (u - hcu) / (a_side * 1.15)
    ny = (v - HEAD_CV) / (HEAD_B * 1.15)
    nz = torch.sqrt(torch.clamp(1 - nx * nx - ny * ny, min=0.0))
    lam = torch.clamp(nx * _col(lx) + ny * _col(ly) + nz * _col(lz), min=0)
    shade = (0.55 + 0.58 * lam)[:, None]

    # --- shoulders and neck
    d_sh = _ellipse(u, v, 0.0, 1.32, 0.95, 0.55)
    cv.paint(cv.cov(d_sh), shirt)
    neck = torch.maximum(torch.abs(u - hcu * 0.5) - 0.2, torch.maximum(0.35 - v, v - 1.0))
    cv.paint(cv.cov(neck), skin[:, :, None, None] * 0.78 * shade)

    # --- back hair (length): a rounded slab behind the head down to the shoulders
    hl = _col(at["hair_length"])
    bottom = -0.05 + 1.0 * hl
    slab = torch.maximum(torch.abs(u - hcu) - (HEAD_A + 0.09), torch.maximum(-0.2 - v, v - bottom))
    back = torch.minimum(_ellipse(u, v, hcu, HEAD_CV - 0.06, HEAD_A + 0.09, HEAD_B + 0.02), slab)
    cv.paint(cv.cov(back), hair[:, :, None, None] * shade * 0.8)

    # --- ears (the far ear tucks behind the head)
    for side in (-1.0, 1.0):
        far = torch.clamp(s * side, min=0)  # > 0 only for the far-side ear, grows with the turn
        eu = hcu + side * (HEAD_A - 0.01) * (1 - 0.25 * far)
        d_ear = _ellipse(u, v, eu, torch.tensor(0.02), 0.075 * (1 - 0.8 * far), torch.tensor(0.12))
        cv.paint(cv.cov(d_ear), skin[:, :, None, None] * 0.9 * shade)

    # --- face
    d_face = _ellipse(u, v, hcu, HEAD_CV, a_side, torch.tensor(HEAD_B))
    face_cov = cv.cov(d_face)
    cv.paint(face_cov, skin[:, :, None, None] * shade)

    # feature positions on the cylinder
    def fpos(x0, radius=HEAD_A):
        pu, fs = _project(torch.full_like(yaw, x0), theta, radius)
        return _col(pu), _col(fs)

    wr = _col(_smoothstep(torch.tensor(0.35), torch.tensor(1.0), age)) * 0.75  # wrinkle opacity

    def const(rgb):
        return torch.tensor([rgb]).expand(B, 3)

    # --- wrinkles: forehead lines (forehead window)
    W = cv.window(-0.45, 0.45, -0.45, -0.15)
    fc, _ = fpos(0.0)
    dark = skin[:, :, None, None] * 0.55 * W.crop(shade)
    for k, vv in enumerate((-0.34, -0.27)):
        curve = vv + 0.25 * (W.u - fc) ** 2
        d = torch.maximum(torch.abs(W.v - curve) - 0.006, torch.abs(W.u - fc) - 0.22 + 0.04 * k)
        W.paint(W.cov(d) * wr * W.crop(face_cov), dark)

    # --- eye band: crow's feet, eyebrows, eyes
    E = cv.window(-0.62, 0.62, -0.3, 0.08)
    dark = skin[:, :, None, None] * 0.55 * E.crop(shade)
    u, v = E.u, E.v
    open_ = _col(at["eyes_open"])
    brow = hair[:, :, None, None] * 0.7
    for side in (-1.0, 1.0):
        eu, es = fpos(side * 0.33)
        for dv in (-0.03, 0.0, 0.03):
            d = _segment(u, v, eu, torch.tensor(-0.07 + dv * 0.6), eu + side * 0.06 * es,
                         torch.tensor(-0.07 + dv * 1.6)) - 0.005
            E.paint(E.cov(d) * wr * E.crop(face_cov), dark)
        eu, es = fpos(side * 0.19)
        ha = 0.085 * es
        hb = 0.006 + 0.055 * open_
        # brow: an arc above the eye, raised a little by open eyes
        bv = -0.19 - 0.03 * open_ + 0.35 * (u - eu) ** 2 / (es * es)
        d = torch.maximum(torch.abs(v - bv) - 0.014, torch.abs(u - eu) - 0.1 * es)
        E.paint(E.cov(d), brow)
        d_eye = _ellipse(u, v, eu, torch.tensor(-0.06), ha, hb)
        eye_in = E.cov(d_eye)
        E.paint(eye_in, const([0.96, 0.96, 0.94]))
        # iris + pupil, clipped to the eye opening; gaze follows the turn a little
        iu = eu + 0.012 * _col(torch.sin(theta))
        iris = E.cov(_ellipse(u, v, iu, torch.tensor(-0.06), 0.04 * es, torch.tensor(0.04))) * eye_in
        E.paint(iris, const([0.30, 0.20, 0.12]))
        pupil = E.cov(_ellipse(u, v, iu, torch.tensor(-0.06), 0.018 * es, torch.tensor(0.018))) * eye_in
        E.paint(pupil, const([0.04, 0.03, 0.03]))
        # lid outline (a line when closed)
        E.paint(E.cov(torch.abs(d_eye) - 0.006), const([0.12, 0.07, 0.06]))

    # --- lower face window: nasolabial folds, nose, mouth
    M = cv.window(-0.5, 0.5, -0.05, 0.45)
    u, v = M.u, M.v
    dark = skin[:, :, None, None] * 0.55 * M.crop(shade)
    for side in (-1.0, 1.0):
        nu, _ = fpos(side * 0.1, HEAD_A * 1.1)
        mu, _ = fpos(side * 0.2)
        d = _segment(u, v, nu, torch.tensor(0.14), mu, torch.tensor(0.33)) - 0.006
        M.paint(M.cov(d) * wr * M.crop(face_cov), dark)
    # nose: protrudes, so it moves further with the turn
    nu, ns = fpos(0.0, HEAD_A * 1.35)
    d = _segment(u, v, nu, torch.tensor(-0.02), nu + 0.035, torch.tensor(0.14)) - 0.008
    M.paint(M.cov(d) * 0.45, dark)
    for side in (-1.0, 1.0):
        d = _ellipse(u, v, nu + side * 0.035 * ns, torch.tensor(0.155), 0.018 * ns, torch.tensor(0.011))
        M.paint(M.cov(d) * 0.7, dark)
    # mouth: a curve whose bend is the smile; positive smiles open into a crescent with teeth
    mu, ms = fpos(0.0, HEAD_A * 1.05)
    mw = 0.15 * ms
    sm = _col(smile)
    q = torch.clamp(1 - ((u - mu) / mw) ** 2, min=0)
    top = 0.30 - 0.02 * sm + 0.075 * sm * q - 0.012
    bot = top + 0.036 + 0.07 * torch.clamp(sm, min=0) * q
    d_m = torch.maximum(torch.abs(u - mu) - mw, torch.maximum(top - v, v - bot))
    lips = skin[:, :, None, None] * torch.tensor([0.78, 0.45, 0.45])[None, :, None, None] * M.crop(shade)
    M.paint(M.cov(d_m), lips)
    inner_top, inner_bot = top + 0.012, bot - 0.012
    d_in = torch.maximum(torch.abs(u - mu) - mw * 0.92, torch.maximum(inner_top - v, v - inner_bot))
    M.paint(M.cov(d_in), const([0.28, 0.06, 0.07]))
    d_teeth = torch.maximum(d_in, v - (inner_top + 0.45 * (inner_bot - inner_top)))
    M.paint(M.cov(d_teeth), const([0.95, 0.94, 0.90]))

    # --- front hair: a cap above a hairline that recedes with age, bangs longer with hair length
    H = cv.window(-EXTENT, EXTENT, -EXTENT, 0.1)
    u, v = H.u, H.v
    hline = -0.33 - 0.11 * _col(age) + 0.9 * (u - hcu) ** 2 + 0.04 * (1 - hl)
    a_cap = torch.where(u - hcu > 0, a_right, a_left) + 0.04
    cap = torch.maximum(_ellipse(u, v, hcu, HEAD_CV - 0.03, a_cap, torch.tensor(HEAD_B + 0.03)), v - hline)
    H.paint(H.cov(cap), hair[:, :, None, None] * H.crop(shade))

    # --- glasses: tinted lenses, round frames, bridge and arms (eye band)
    u, v = E.u, E.v
    g = _col(at["glasses"])
    frame = const([0.08, 0.08, 0.10])
    inner = []
    for side in (-1.0, 1.0):
        eu, es = fpos(side * 0.19)
        d_lens = _ellipse(u, v, eu, torch.tensor(-0.055), 0.115 * es, torch.tensor(0.1))
        E.paint(E.cov(d_lens) * g * 0.25, const([0.55, 0.70, 0.85]))
        E.paint(E.cov(torch.abs(d_lens) - 0.011) * g, frame)
        inner.append(eu - side * 0.115 * es)
        # arm toward the ear
        ear_u = hcu + side * (HEAD_A - 0.02) * (1 - 0.25 * torch.clamp(s * side, min=0))
        d_arm = _segment(u, v, eu + side * 0.115 * es, torch.tensor(-0.07), ear_u, torch.tensor(-0.03)) - 0.009
        E.paint(E.cov(d_arm) * g, frame)
    d_br = _segment(u, v, inner[0], torch.tensor(-0.07), inner[1], torch.tensor(-0.07)) - 0.009
    E.paint(E.cov(d_br) * g, frame)

    return cv.img


def render(attrs, size: int = 64, supersample: int = 3, chunk: int = 64) -> np.ndarray:
    """Render attribute vectors [n, K] (columns in ``ATTRIBUTES`` order) to uint8 [n, size, size, 3].

    Drawn at ``size * supersample`` pixels and box-filtered down. A pure function of ``attrs``:
    each image depends only on its own row (the batch is split into ``chunk``-sized pieces)."""
    a = torch.as_tensor(np.asarray(attrs, dtype=np.float32))
    if a.dim() != 2 or a.shape[1] != len(ATTRIBUTES):
        raise ValueError(f"attrs must be [n, {len(ATTRIBUTES)}] in the order {ATTRIBUTES}, got {tuple(a.shape)}")
    lo = torch.tensor([ATTRIBUTE_SPECS[k][0] for k in ATTRIBUTES])
    hi = torch.tensor([ATTRIBUTE_SPECS[k][1] for k in ATTRIBUTES])
    a = torch.maximum(torch.minimum(a, hi), lo)
    out = np.empty((a.shape[0], size, size, 3), np.uint8)
    for i in range(0, a.shape[0], chunk):
        part = a[i:i + chunk]
        img = _draw({k: part[:, j] for j, k in enumerate(ATTRIBUTES)}, size * supersample)
        img = F.avg_pool2d(img, supersample) if supersample > 1 else img
        out[i:i + chunk] = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
