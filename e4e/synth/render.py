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

Realism gap (``render(..., gap=G, seeds=...)``, ``stretch_attributes``): "real" images get details the
clean renderer never draws (skin texture, freckles, moles, a scar, earrings, a headband, patterned
backgrounds, extra saturation; ``REALISM_DETAILS``) and a few yaw/smile values past their range, from a
random stream per image. The generator is trained on clean renders (gap 0, bit-identical to a call
without ``gap``), so these details are what a W-space inversion cannot reach.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ATTRIBUTES", "ATTRIBUTE_SPECS", "attr_index", "sample_attributes", "render",
           "default_attributes", "stretch_attributes", "REALISM_DETAILS", "BEYOND_RANGE", "BEYOND_RATE",
           "BEYOND_MAX"]

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
def _draw(at: dict[str, torch.Tensor], res: int, real: "_RealismGap | None" = None) -> torch.Tensor:
    """Draw a batch (attribute name -> [B] tensor) at ``res`` pixels: float RGB [B, 3, res, res] in [0, 1].

    ``real`` (the realism-gap details of this batch) paints extra layers at fixed points of the drawing
    order, so faces, hair and glasses occlude them as they would; ``None`` draws the clean face."""
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
    if real is not None:
        real.background(cv)

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
        if real is not None:
            real.earring(cv, eu, shade)

    # --- face
    d_face = _ellipse(u, v, hcu, HEAD_CV, a_side, torch.tensor(HEAD_B))
    face_cov = cv.cov(d_face)
    cv.paint(face_cov, skin[:, :, None, None] * shade)
    if real is not None:
        real.skin(cv, face_cov, skin, shade, hcu)

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
    if real is not None:
        real.headband(cv, hcu, a_right, a_left, shade)

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

    if real is not None:
        real.saturate(cv)
    return cv.img


# ----------------------------------------------------------------------------- the realism gap
#
# Real photographs carry detail that the clean renderer (and so a generator trained on it) never
# produces. ``render(..., gap=G, seeds=...)`` adds such detail to each image from that image's own
# random stream; ``stretch_attributes`` pushes a few attribute values beyond the sampled ranges.
# Each image draws the same numbers in the same order whatever G is, and G only scales strengths and
# rates, so a larger gap strengthens the same details. Only exact float operations (no
# transcendentals) touch pixels, so an image does not depend on its batch or chunk.

BEYOND_RANGE = ("yaw", "smile")  # attributes that stretch_attributes may push past their spec range
BEYOND_RATE, BEYOND_MAX = 0.2, 0.3  # fraction min(G,1)*RATE of images per attribute; |x| <= 1 + MAX*G
_N_FRECKLES, _N_MOLES, _N_BLOBS = 20, 3, 5
_STRETCH_STREAM, _DETAIL_STREAM = 1, 2  # sub-stream tags of an image's seed

#: Detail type -> what it is and how it scales with the gap G (m = min(G, 1)); written to meta.json.
REALISM_DETAILS: dict[str, str] = {
    "skin_texture": "per-pixel multiplicative luminance noise on the face skin, std 0.045*G",
    "freckles": f"up to {_N_FRECKLES} small brown dots on cheeks and nose; count ~ m, opacity ~ G",
    "moles": f"up to {_N_MOLES} dark spots anywhere on the face, each with probability 0.5*m",
    "scar": "a thin reddish line on one cheek, probability 0.25*m",
    "earrings": "gold or silver studs or hoops on both ear lobes, probability 0.4*m",
    "headband": "a coloured band across the top of the head, probability 0.3*m",
    "background_pattern": "stripes, checks or blobs in a second colour over the background, opacity up to 0.6*G",
    "saturation": "colour saturation of the whole image raised by (0.3..0.7)*G, probability 0.3*m",
    "attributes_beyond_range": f"{' and '.join(BEYOND_RANGE)} each pushed to |x| = 1 + U(0, {BEYOND_MAX})*G "
                               f"with probability {BEYOND_RATE}*m (stretch_attributes; the CSV records the values used)",
}


def _stream(seed, tag: int) -> np.random.Generator:
    """Sub-stream ``tag`` of one image's seed (an int or a sequence of ints)."""
    entropy = [int(seed)] if np.ndim(seed) == 0 else [int(x) for x in seed]
    return np.random.default_rng([*entropy, tag])


def _check_seeds(seeds, n: int) -> list:
    if seeds is None or len(seeds) != n:
        raise ValueError(f"gap > 0 needs seeds, one per image ({n}), e.g. [(seed, i) for i in range(n)]; "
                         f"got {None if seeds is None else len(seeds)}")
    return list(seeds)


def _bounds(gap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping range of each attribute: the spec range, widened for ``BEYOND_RANGE`` when gap > 0."""
    lo = torch.tensor([ATTRIBUTE_SPECS[k][0] for k in ATTRIBUTES])
    hi = torch.tensor([ATTRIBUTE_SPECS[k][1] for k in ATTRIBUTES])
    if gap > 0:
        wide = torch.tensor([k in BEYOND_RANGE for k in ATTRIBUTES])
        lo = torch.where(wide, lo - BEYOND_MAX * gap, lo)
        hi = torch.where(wide, hi + BEYOND_MAX * gap, hi)
    return lo, hi


def stretch_attributes(attrs, gap: float, seeds) -> np.ndarray:
    """The attribute values a "real" image of the gap-``gap`` data set is rendered with.

    For each image and each attribute of ``BEYOND_RANGE`` (symmetric, range [-1, 1]), with probability
    ``BEYOND_RATE * min(gap, 1)`` the value becomes ``sign(x) * (1 + U(0, BEYOND_MAX) * gap)``: past
    the range the generator is trained on. Drawn from each image's seed in ``seeds`` (as ``render``'s),
    so image i depends only on row i and seed i. Returns a float32 copy; gap 0 returns it unchanged."""
    a = np.array(attrs, dtype=np.float32)
    if gap <= 0:
        return a
    m = min(gap, 1.0)
    for i, s in enumerate(_check_seeds(seeds, len(a))):
        flag, over = _stream(s, _STRETCH_STREAM).random((2, len(BEYOND_RANGE)))
        for j, name in enumerate(BEYOND_RANGE):
            if flag[j] < BEYOND_RATE * m:
                col = attr_index(name)
                a[i, col] = math.copysign(1.0 + BEYOND_MAX * gap * over[j], a[i, col])
    return a


def _detail_draws(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """One image's raw draws (uniforms unless noted), always the same shapes in the same order."""
    bg = rng.random(7)  # pattern kind, angle, period, 2 phases, opacity, hue
    scar = rng.random(6)  # presence, side, u, v, angle, length
    return dict(
        bg=bg, bg_dir=np.array([math.cos(math.pi * bg[1]), math.sin(math.pi * bg[1])]),
        blobs=rng.random((_N_BLOBS, 3)),  # u, v, radius
        noise=rng.standard_normal((size, size)),  # skin texture, one value per output pixel
        freckles=rng.random((_N_FRECKLES, 5)),  # presence, u, v, radius, opacity
        density=rng.random(1),  # how freckled the face is
        moles=rng.random((_N_MOLES, 5)),  # presence, u, v, radius, opacity
        scar=scar, scar_dir=np.array([math.cos(math.pi * scar[4]), math.sin(math.pi * scar[4])]),
        earrings=rng.random(4),  # presence, stud/hoop, gold/silver, size
        headband=rng.random(5),  # presence, hue, height, width, curvature
        saturation=rng.random(2),  # presence, amount
    )


class _RealismGap:
    """The realism-gap details of one batch, painted by ``_draw`` at its hooks.

    Parameters come from each image's stream (``_detail_draws``); patterns and spots are computed on
    the output-pixel grid and repeated ``supersample`` times (so the box filter gives them back as
    drawn), accessories are drawn as signed-distance shapes on the render canvas like the face."""

    def __init__(self, gap: float, seeds, size: int, supersample: int):
        draws = [_detail_draws(_stream(s, _DETAIL_STREAM), size) for s in seeds]
        self.d = {k: torch.from_numpy(np.stack([x[k] for x in draws])).float() for k in draws[0]}
        self.gap, self.m, self.ss = float(gap), min(float(gap), 1.0), supersample
        c = ((torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1) * EXTENT
        self.v, self.u = c[None, :, None], c[None, None, :]  # output-pixel centres
        self.px = 2.0 * EXTENT / size

    def _up(self, x):
        """[B, size, size] -> [B, size*ss, size*ss] by repetition."""
        return x.repeat_interleave(self.ss, -1).repeat_interleave(self.ss, -2)

    def _present(self, u, rate):
        return (u < rate * self.m).float()

    def _window(self, cv, u0, u1, v0, v1):
        """The render-canvas window over [u0, u1] x [v0, v1], aligned to output pixels, and its
        (rows, cols) on the output grid."""
        def span(x0, x1):
            n = self.u.shape[-1]
            return slice(max(0, int((x0 / EXTENT + 1) / 2 * n)), min(n, int((x1 / EXTENT + 1) / 2 * n) + 1))
        rows, cols = span(v0, v1), span(u0, u1)
        r = slice(rows.start * self.ss, rows.stop * self.ss)
        c = slice(cols.start * self.ss, cols.stop * self.ss)
        return _Canvas(0, cv.res, cv.img[:, :, r, c], cv.u[:, :, c], cv.v[:, r, :], r, c), rows, cols

    def _spots(self, u, v, cu, cv, r, opacity):
        """Coverage [B, h, w] on the output-grid coordinates ``u`` [1,1,w], ``v`` [1,h,1] of the union of
        discs (centres, radii, opacities: [B, K])."""
        du = u[None] - cu[:, :, None, None]
        dv = v[None] - cv[:, :, None, None]
        d = torch.sqrt(du * du + dv * dv) - r[:, :, None, None]
        return (torch.clamp(0.5 - d / self.px, 0, 1) * opacity[:, :, None, None]).amax(1)

    def background(self, cv):
        """Stripes, checks or blobs in a second colour over the background."""
        b, bl = self.d["bg"], self.d["blobs"]
        kind = torch.clamp((b[:, 0] * 3).long(), max=2)[:, None, None]
        ca, sa = _col(self.d["bg_dir"][:, 0]), _col(self.d["bg_dir"][:, 1])
        period = _col(0.1 + 0.2 * b[:, 2])

        def wave(x):  # soft square wave in [-1, 1], period 1
            return torch.clamp(8 * torch.abs(x - torch.floor(x) - 0.5) - 2, -1, 1)

        stripes = wave((self.u * ca + self.v * sa) / period + _col(b[:, 3]))
        checks = stripes * wave((self.v * ca - self.u * sa) / period + _col(b[:, 4]))
        blobs = torch.zeros_like(stripes)
        for k in range(_N_BLOBS):
            r = _col(0.12 + 0.2 * bl[:, k, 2])
            du, dv = (self.u - _col(1.6 * bl[:, k, 0] - 0.8)) / r, (self.v - _col(1.6 * bl[:, k, 1] - 0.8)) / r
            blobs = blobs + torch.clamp(1 - du * du - dv * dv, min=0) ** 2
        pattern = torch.where(kind == 0, stripes, torch.where(kind == 1, checks, 2 * torch.clamp(blobs, max=1) - 1))
        alpha = (pattern + 1) * 0.5 * _col(torch.clamp(self.gap * (0.25 + 0.35 * b[:, 5]), max=0.6))
        second = _hsv(b[:, 6], torch.full_like(b[:, 6], 0.5), torch.full_like(b[:, 6], 0.75))
        cv.paint(self._up(alpha), second)

    def earring(self, cv, eu, shade):
        """A stud or a hoop on the lobe of the ear centred at ``eu`` ([B,1,1])."""
        e = self.d["earrings"]
        present = self._present(e[:, 0], 0.4)
        if not present.any():  # painting with zero coverage is an exact no-op: skip the work
            return
        W = cv.window(-0.62, 0.62, 0.05, 0.3)
        hoop = _col(e[:, 1] >= 0.5)
        radius = torch.where(hoop, _col(0.03 + 0.016 * e[:, 3]), torch.zeros(()))
        width = torch.where(hoop, torch.tensor(0.009), _col(0.018 + 0.012 * e[:, 3]))
        dist = torch.sqrt((W.u - eu) ** 2 + (W.v - 0.125 - radius) ** 2 + 1e-12)
        alpha = W.cov(torch.abs(dist - radius) - width) * _col(present)
        metal = torch.where((e[:, 2] < 0.5)[:, None], torch.tensor([[0.95, 0.76, 0.3]]), torch.tensor([[0.88, 0.88, 0.92]]))
        W.paint(alpha, metal[:, :, None, None] * (0.3 + 0.7 * W.crop(shade)))

    def skin(self, cv, face_cov, skin, shade, hcu):
        """Skin texture, freckles, moles and a scar, painted before the features so those cover them."""
        g, m = self.gap, self.m
        W, rows, cols = self._window(cv, -0.56, 0.56, HEAD_CV - HEAD_B - 0.02, HEAD_CV + HEAD_B + 0.02)  # the face
        W.img.mul_(1 + (0.045 * g) * self._up(self.d["noise"][:, rows, cols])[:, None] * W.crop(face_cov)[:, None])
        hu = hcu[:, :, 0]  # [B, 1]
        mo = self.d["moles"]
        moles = self._spots(self.u[:, :, cols], self.v[:, rows, :], hu + 0.7 * mo[..., 1] - 0.35,
                            HEAD_CV + 0.9 * mo[..., 2] - 0.45, 0.012 + 0.01 * mo[..., 3],
                            self._present(mo[..., 0], 0.5) * min(1.0, 0.6 + 0.4 * g) * (0.7 + 0.3 * mo[..., 4]))
        W.paint(self._up(moles) * W.crop(face_cov), torch.tensor([0.24, 0.14, 0.1])[None, :, None, None] * W.crop(shade))
        # freckles: a band over the cheeks and the nose
        f = self.d["freckles"]
        density = torch.clamp(1.5 * self.d["density"] - 0.5, 0, 1)  # a third of faces have none
        W, rows, cols = self._window(cv, -0.37, 0.37, -0.15, 0.21)
        freckles = self._spots(self.u[:, :, cols], self.v[:, rows, :], hu + 0.6 * f[..., 1] - 0.3,
                               -0.12 + 0.3 * f[..., 2], 0.008 + 0.01 * f[..., 3],
                               (f[..., 0] < m * density).float() * torch.clamp(g * (0.6 + 0.4 * f[..., 4]), max=0.9))
        W.paint(self._up(freckles) * W.crop(face_cov),
                skin[:, :, None, None] * torch.tensor([0.7, 0.5, 0.38])[:, None, None] * W.crop(shade))
        # a scar on one cheek
        s, d = self.d["scar"], self.d["scar_dir"]
        present = self._present(s[:, 0], 0.25)
        if not present.any():
            return
        S = cv.window(-0.5, 0.5, -0.1, 0.38)
        side = torch.where(s[:, 1] < 0.5, -1.0, 1.0)
        cu, cvv, half = hcu + _col(side * (0.14 + 0.14 * s[:, 2])), _col(0.02 + 0.18 * s[:, 3]), _col(0.05 + 0.04 * s[:, 5])
        du, dv = half * _col(d[:, 0]), half * _col(d[:, 1])
        alpha = S.cov(_segment(S.u, S.v, cu - du, cvv - dv, cu + du, cvv + dv) - 0.008)
        alpha = alpha * _col(present) * 0.85 * S.crop(face_cov)
        S.paint(alpha, (skin * torch.tensor([0.8, 0.5, 0.5]))[:, :, None, None] * S.crop(shade))

    def headband(self, cv, hcu, a_right, a_left, shade):
        """A coloured band across the top of the head, on the hair."""
        h = self.d["headband"]
        present = self._present(h[:, 0], 0.3)
        if not present.any():
            return
        W = cv.window(-0.62, 0.62, -0.75, -0.1)
        top = _col(-0.62 + 0.1 * h[:, 2]) + _col(0.5 + 0.5 * h[:, 4]) * (W.u - hcu) ** 2
        band = torch.maximum(top - W.v, W.v - top - _col(0.045 + 0.04 * h[:, 3]))
        a = torch.where(W.u - hcu > 0, a_right, a_left) + 0.052
        alpha = W.cov(torch.maximum(band, _ellipse(W.u, W.v, hcu, HEAD_CV - 0.03, a, torch.tensor(HEAD_B + 0.045))))
        colour = _hsv(h[:, 1], torch.full_like(h[:, 1], 0.7), torch.full_like(h[:, 1], 0.8))
        W.paint(alpha * _col(present), colour[:, :, None, None] * W.crop(shade))

    def saturate(self, cv):
        """Raise the colour saturation of some images past anything the clean renderer draws."""
        s = self.d["saturation"]
        idx = torch.nonzero(s[:, 0] < 0.3 * self.m)[:, 0]
        img = cv.img[idx]
        lum = (img[:, 0:1] + img[:, 1:2] + img[:, 2:3]) / 3
        cv.img[idx] = lum + (img - lum) * (1 + self.gap * (0.3 + 0.4 * s[idx, 1]))[:, None, None, None]


def render(attrs, size: int = 64, supersample: int = 3, chunk: int = 64, gap: float = 0.0,
           seeds=None) -> np.ndarray:
    """Render attribute vectors [n, K] (columns in ``ATTRIBUTES`` order) to uint8 [n, size, size, 3].

    Drawn at ``size * supersample`` pixels and box-filtered down. A pure function of ``attrs``:
    each image depends only on its own row (the batch is split into ``chunk``-sized pieces).

    ``gap`` > 0 adds the realism gap (``REALISM_DETAILS``), details the clean renderer never draws,
    more and stronger with larger ``gap`` (about 1 is strong); ``seeds`` then gives one seed per image
    (an int or a tuple of ints), and image i is a pure function of row i and seed i. With gap > 0 the
    attributes of ``BEYOND_RANGE`` are clipped to a range widened by ``BEYOND_MAX * gap`` (see
    ``stretch_attributes``). ``gap`` = 0 (the default) ignores ``seeds`` and draws the clean faces."""
    a = torch.as_tensor(np.asarray(attrs, dtype=np.float32))
    if a.dim() != 2 or a.shape[1] != len(ATTRIBUTES):
        raise ValueError(f"attrs must be [n, {len(ATTRIBUTES)}] in the order {ATTRIBUTES}, got {tuple(a.shape)}")
    if not gap >= 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    if gap > 0:
        seeds = _check_seeds(seeds, a.shape[0])
    lo, hi = _bounds(gap)
    a = torch.maximum(torch.minimum(a, hi), lo)
    out = np.empty((a.shape[0], size, size, 3), np.uint8)
    for i in range(0, a.shape[0], chunk):
        part = a[i:i + chunk]
        real = _RealismGap(gap, seeds[i:i + chunk], size, supersample) if gap > 0 else None
        img = _draw({k: part[:, j] for j, k in enumerate(ATTRIBUTES)}, size * supersample, real)
        img = F.avg_pool2d(img, supersample) if supersample > 1 else img
        out[i:i + chunk] = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
