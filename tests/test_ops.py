"""e4e.ops against definitions written independently of it (NumPy / SciPy), plus gradient checks
(R1 and path-length regularisation need first and second derivatives)."""
import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from e4e.ops import FusedLeakyReLU, fused_leaky_relu, make_kernel, upfirdn2d


def ref_upfirdn2d(x: np.ndarray, k: np.ndarray, up: int, down: int, pad) -> np.ndarray:
    """Zero insertion, pad (negative = crop), true 2-D convolution, decimation — per channel."""
    x0, x1, y0, y1 = pad
    b, c, h, w = x.shape
    out = []
    for img in x.reshape(b * c, h, w):
        z = np.zeros((h * up, w * up))
        z[::up, ::up] = img
        z = np.pad(z, ((max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
        z = z[max(-y0, 0): z.shape[0] - max(-y1, 0), max(-x0, 0): z.shape[1] - max(-x1, 0)]
        out.append(convolve2d(z, k, mode="valid")[::down, ::down])
    return np.stack(out).reshape(b, c, *out[0].shape)


CASES = [  # up, down, pad (x0, x1, y0, y1)
    (1, 1, (0, 0, 0, 0)),
    (1, 1, (1, 2, 2, 1)),
    (2, 1, (2, 1, 2, 1)),
    (1, 2, (1, 1, 1, 1)),
    (2, 2, (1, 2, 0, 3)),
    (3, 1, (1, 1, 2, 2)),
    (1, 3, (2, 2, 2, 2)),
    (2, 1, (-1, 2, 1, -2)),
    (1, 1, (-2, -1, 0, -1)),
    (1, 2, (-1, 3, 2, -1)),
]


@pytest.mark.parametrize("up,down,pad", CASES)
def test_upfirdn2d_matches_reference(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 9))
    k = rng.standard_normal((4, 3))  # asymmetric and non-square: catches flips / axis swaps
    got = upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=pad).numpy()
    want = ref_upfirdn2d(x, k, up, down, pad)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_upfirdn2d_two_entry_pad_and_float32():
    x = torch.randn(1, 2, 8, 8)
    k = make_kernel([1, 3, 3, 1])
    got = upfirdn2d(x, k, up=2, pad=(2, 1))
    want = ref_upfirdn2d(x.double().numpy(), k.double().numpy(), 2, 1, (2, 1, 2, 1))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_make_kernel_separable_and_normalised():
    k = make_kernel([1, 3, 3, 1])
    assert k.shape == (4, 4) and abs(float(k.sum()) - 1) < 1e-6
    np.testing.assert_allclose(k.numpy(), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)


def test_fused_leaky_relu_definition():
    x = torch.randn(2, 5, 3, 3)
    b = torch.randn(5)
    got = fused_leaky_relu(x, b)
    y = x.numpy() + b.numpy()[None, :, None, None]
    want = np.where(y >= 0, y, 0.2 * y) * np.sqrt(2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    # 2-D inputs (EqualLinear) and the module form
    x2 = torch.randn(4, 5)
    m = FusedLeakyReLU(5)
    m.bias.data.copy_(b)
    torch.testing.assert_close(m(x2), fused_leaky_relu(x2, b))


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)), (2, 2, (-1, 2, 1, 0))])
def test_upfirdn2d_gradcheck(up, down, pad):
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 4, dtype=torch.float64)
    f = lambda t: upfirdn2d(t, k, up=up, down=down, pad=pad)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_fused_bias_act_gradcheck():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x = (x + 0.1 * torch.sign(x)).requires_grad_(True)  # keep away from the kink at 0
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fused_leaky_relu, (x, b))
    assert torch.autograd.gradgradcheck(fused_leaky_relu, (x, b))
