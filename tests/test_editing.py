"""Editing: direction files, InterFaceGAN fit, GANSpace add vs official set, SeFa row mapping."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from e4e import editing
from e4e.models.stylegan2 import Generator


def _tiny_generator(size=32, dim=16):
    torch.manual_seed(0)
    return Generator(size, style_dim=dim, n_mlp=2, channels={r: 8 for r in (4, 8, 16, 32, 64)}).eval()


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def test_load_direction_pt_cuda_saved_and_npy(tmp_path):
    d = F.normalize(torch.randn(1, 512), dim=1)
    # a file saved from a CUDA tensor (like the official pose.pt): storage location tag 'cuda:0'
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(d, tmp_path / "pose.pt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "pose.pt", weights_only=True)
    loaded = editing.load_direction(tmp_path / "pose.pt")
    assert loaded.device.type == "cpu" and torch.equal(loaded, d)
    np.save(tmp_path / "age.npy", d.numpy())
    assert torch.equal(editing.load_direction(tmp_path / "age.npy"), d)
    with pytest.raises(ValueError, match="unknown direction file type"):
        editing.load_direction(tmp_path / "age.txt")


def test_load_direction_by_domain_and_pca_files(tmp_path, monkeypatch):
    monkeypatch.setenv("E4E_DIRECTIONS", str(tmp_path))
    (tmp_path / "cars").mkdir()
    d = torch.randn(1, 14, 512)
    torch.save(d, tmp_path / "cars" / "smile.pt")
    assert torch.equal(editing.load_direction("cars", "smile"), d)
    pca = {"comp": torch.randn(80, 1, 512), "mean": torch.randn(1, 512), "std": torch.rand(80)}
    torch.save(pca, tmp_path / "cars" / "cars_pca.pt")
    got = editing.load_direction("cars", "cars_pca")
    assert set(got) == {"comp", "mean", "std"} and torch.equal(got["comp"], pca["comp"])
    np.savez(tmp_path / "cars" / "gs.npz", lat_comp=pca["comp"].numpy(), lat_mean=pca["mean"].numpy(),
             lat_stdev=pca["std"].numpy())
    assert torch.equal(editing.load_ganspace_pca(tmp_path / "cars" / "gs.npz")["std"], pca["std"])
    with pytest.raises(FileNotFoundError, match="no editing direction 'age' for domain 'cars'"):
        editing.load_direction("cars", "age")


def test_apply_edit_shapes_and_rows():
    w = torch.randn(2, 6, 4)
    d = torch.ones(1, 4)
    assert torch.allclose(editing.apply_edit(w, d, 2.0) - w, torch.full_like(w, 2.0))
    out = editing.apply_edit(w, d, 1.0, rows=[1, 3])
    changed = (out - w).abs().sum((0, 2)) > 0
    assert changed.tolist() == [False, True, False, True, False, False]
    per_row = torch.randn(1, 6, 4)
    assert torch.allclose(editing.apply_edit(w, per_row, -1.0), w - per_row)
    with pytest.raises(ValueError, match="fits neither"):
        editing.apply_edit(w, torch.ones(5), 1.0)


# ---------------------------------------------------------------------------------------------
# InterFaceGAN
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,ratio", [("svm", 0.1), ("logistic", 0.1), ("regression", 0.02)])
def test_interfacegan_recovers_planted_direction(kind, ratio):
    g = torch.Generator().manual_seed(0)
    n = F.normalize(torch.randn(32, generator=g), dim=0)
    w = torch.randn(4000, 32, generator=g) * 2 + 1
    scores = w @ n + 0.2 * torch.randn(4000, generator=g)
    d = editing.fit_interfacegan(w, scores, kind=kind, ratio=ratio)
    assert d.shape == (1, 32) and d.norm() == pytest.approx(1.0, abs=1e-5)
    assert float(d[0] @ n) > 0.95


def test_interfacegan_binary_labels():
    g = torch.Generator().manual_seed(1)
    n = F.normalize(torch.randn(16, generator=g), dim=0)
    w = torch.randn(2000, 16, generator=g)
    labels = (w @ n > 0).long()
    assert float(editing.fit_interfacegan(w, labels, "svm")[0] @ n) > 0.95
    with pytest.raises(ValueError, match="known"):
        editing.fit_interfacegan(w, labels, "tree")


def _boundary_problem(n=160, d=8, seed=0):
    """Seeded, overlapping classes (so C and the support vectors matter)."""
    rng = np.random.RandomState(seed)
    normal = rng.randn(d) / np.sqrt(d)
    x = rng.randn(n, d) * 1.5 + 0.5
    y = (x @ normal + 0.4 * rng.randn(n) > 0.2).astype(float)
    return x, y


def _svm_dual(x, y, c):
    """Independent hinge-loss SVM: the dual QP min 0.5 a'Qa - sum(a), 0 <= a <= C, sum(a s) = 0, by
    scipy's interior-point trust-constr; w = sum(a s x)."""
    from scipy.optimize import Bounds, LinearConstraint, minimize

    s = 2 * y - 1
    q = (s[:, None] * x) @ (s[:, None] * x).T
    res = minimize(lambda a: 0.5 * a @ q @ a - a.sum(), np.zeros(len(y)), jac=lambda a: q @ a - 1, hess=lambda a: q,
                   bounds=Bounds(0, c), constraints=LinearConstraint(s[None], 0, 0), method="trust-constr",
                   options={"gtol": 1e-11, "xtol": 1e-13, "maxiter": 5000})
    assert res.success, res.message
    return (res.x * s) @ x


def _cos(a, b):
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("c", [0.05, 1.0])
def test_svm_boundary_matches_independent_dual_solver_and_svc(c):
    from sklearn.svm import SVC

    x, y = _boundary_problem()
    fit = editing.fit_boundary(x, y, "svm", holdout=0.0, c=c)
    normal = fit.normal.double().numpy().ravel()
    assert fit.normal.shape == (1, 8) and np.linalg.norm(normal) == pytest.approx(1.0, abs=1e-6)
    assert 1 - _cos(normal, _svm_dual(x, y, c)) < 1e-4
    assert 1 - _cos(normal, SVC(kernel="linear", C=c).fit(x, y).coef_) < 1e-4
    assert fit.info["converged"] and fit.info["C"] == c and fit.info["n_train"] == 160 and fit.info["n_iter"] > 0
    # labels flipped -> the normal flips (points towards increasing labels)
    flipped = editing.fit_boundary(x, 1 - y, "svm", holdout=0.0, c=c).normal.double().numpy().ravel()
    assert _cos(normal, flipped) < -1 + 1e-4


def test_logistic_boundary_converges_to_the_optimum():
    from scipy.optimize import minimize

    x, y = _boundary_problem(seed=1)
    s = 2 * y - 1

    def objective(p):  # 0.5||w||^2 + C sum log(1 + exp(-s (xw + b))), C = 1, bias unregularised
        m = s * (x @ p[:-1] + p[-1])
        g = -s * np.exp(-np.logaddexp(0, m))
        return 0.5 * p[:-1] @ p[:-1] + np.logaddexp(0, -m).sum(), np.append(p[:-1] + x.T @ g, g.sum())

    ref = minimize(objective, np.zeros(9), jac=True, method="BFGS", options={"gtol": 1e-10})
    fit = editing.fit_boundary(x, y, "logistic", holdout=0.0)
    assert fit.info["converged"] and 1 - _cos(fit.normal, ref.x[:-1]) < 1e-8
    with pytest.raises(editing.BoundaryNotConverged, match="tolerance"):
        editing.fit_boundary(x, y, "logistic", holdout=0.0, max_iter=2)
    with pytest.raises(editing.BoundaryNotConverged, match="tolerance"):
        editing.fit_boundary(x, y, "svm", holdout=0.0, max_iter=3)


def test_boundary_fit_holdout_split_and_accuracy():
    x, y = _boundary_problem(n=400, d=8, seed=2)
    scores = torch.from_numpy(x @ np.ones(8) + np.random.RandomState(3).randn(400))
    fit = editing.fit_boundary(torch.from_numpy(x), scores, "svm", ratio=0.25, seed=4)
    info = fit.info
    assert (info["n_train"], info["n_val"]) == (140, 60)           # 100 per side, 30% of each held out
    assert 0.8 < info["val_accuracy"] <= 1.0 and info["train_accuracy"] > 0.8
    again = editing.fit_boundary(torch.from_numpy(x), scores, "svm", ratio=0.25, seed=4)
    assert torch.equal(fit.normal, again.normal) and again.info == info
    other = editing.fit_boundary(torch.from_numpy(x), scores, "svm", ratio=0.25, seed=5)
    assert not torch.equal(fit.normal, other.normal)
    assert torch.equal(editing.fit_interfacegan(torch.from_numpy(x), scores, "svm", 0.25, seed=4), fit.normal)


def test_build_directions_records_fit_quality(tmp_path):
    import json

    from e4e.synth import directions

    class MeanAttr(torch.nn.Module):  # attribute = mean intensity of the red channel
        ATTRIBUTES = ("smile", "yaw")

        def forward(self, x):
            return torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2))], 1)

    report = directions.build_directions(_tiny_generator(), MeanAttr(), tmp_path, n=500, progress=False)
    saved = json.loads((tmp_path / "directions.json").read_text())
    for name in ("smile", "yaw"):
        fit = saved["interfacegan"][name]["fit"]
        assert fit["kind"] == "svm" and fit["converged"] and fit["C"] == 1.0
        assert (fit["n_train"], fit["n_val"]) == (14, 6) and 0 <= fit["val_accuracy"] <= 1
    assert saved == json.loads(json.dumps(report)) and (tmp_path / "pose.pt").is_file()
    # edit quality: the red-channel "smile" direction moves red, in units of the rendered SD
    q = saved["interfacegan"]["smile"]["quality"]
    assert q["target"] == "smile" and q["gain_sd"] > 0 and q["strength"] == directions.QUALITY_STRENGTH
    assert len(saved["ganspace"]) == len(saved["sefa"]) == directions.N_COMPONENTS_REPORTED


# ---------------------------------------------------------------------------------------------
# GANSpace
# ---------------------------------------------------------------------------------------------
def test_ganspace_pca_format_and_add_vs_set_official():
    gen = _tiny_generator()
    pca = editing.ganspace_pca(gen, n=3000, n_components=8)
    assert pca["comp"].shape == (8, 1, 16) and pca["mean"].shape == (1, 16) and pca["std"].shape == (8,)
    comp = pca["comp"][:, 0]
    assert torch.allclose(comp @ comp.T, torch.eye(8), atol=1e-5)
    assert (pca["std"][:-1] >= pca["std"][1:]).all()

    w = gen.mapping(torch.randn(3, 16)).unsqueeze(1).repeat(1, gen.n_latent, 1)
    coord = lambda x, r: ((x[:, r] - pca["mean"]) @ comp[2]) / pca["std"][2]  # noqa: E731
    add = editing.ganspace_edit(w, pca, 2, 0, 4, 5.0, mode="add")
    put = editing.ganspace_edit(w, pca, 2, 0, 4, 5.0, mode="set_official")
    # 'add' moves the coordinate by +5 std; the official variant SETS row 0's coordinate to 5 std
    assert torch.allclose(coord(add, 0), coord(w, 0) + 5.0, atol=1e-4)
    assert torch.allclose(coord(put, 0), torch.full((3,), 5.0), atol=1e-4)
    assert not torch.allclose(add, put)
    for out in (add, put):  # rows outside start:end untouched
        assert torch.equal(out[:, 4:], w[:, 4:])
    with pytest.raises(ValueError, match="set_official"):
        editing.ganspace_edit(w, pca, 2, 0, 4, 5.0, mode="set")


# ---------------------------------------------------------------------------------------------
# SeFa
# ---------------------------------------------------------------------------------------------
def _rows_read_by_modulations(gen):
    """Empirically: perturb each W+ row and see which modulation layers' inputs change."""
    names = list(editing.modulation_rows(gen))
    seen: dict[str, torch.Tensor] = {}
    hooks = [gen.get_submodule(n).conv.modulation.register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, i[0].clone())) for n in names]
    w = torch.randn(1, gen.n_latent, gen.style_dim)
    with torch.no_grad():
        gen.synthesis(w)
        base = dict(seen)
        reads = {n: [] for n in names}
        for r in range(gen.n_latent):
            w2 = w.clone()
            w2[:, r] += 1.0
            gen.synthesis(w2)
            for n in names:
                if not torch.equal(seen[n], base[n]):
                    reads[n].append(r)
    for h in hooks:
        h.remove()
    return reads


def test_sefa_modulation_rows_match_generator():
    gen = _tiny_generator(size=32)
    rows = editing.modulation_rows(gen)
    reads = _rows_read_by_modulations(gen)
    assert {n: [r] for n, r in rows.items()} == reads
    assert rows["conv1"] == 0 and rows["to_rgb1"] == 1 and rows["convs.0"] == 1 and rows["to_rgbs.0"] == 3
    assert rows[f"to_rgbs.{len(gen.to_rgbs) - 1}"] == gen.n_latent - 1


def test_sefa_directions_and_official_off_by_one():
    gen = _tiny_generator(size=32)
    dirs, vals, rows = editing.sefa_directions(gen, rows=[2])
    assert rows == [2]
    assert torch.allclose(dirs @ dirs.T, torch.eye(16), atol=1e-4)
    assert (vals[:-1] >= vals[1:] - 1e-6).all()
    a = gen.convs[1].conv.modulation.weight.detach().double()  # row 2 is read by convs.1
    a = a / a.norm(dim=1, keepdim=True)
    top = torch.linalg.eigh(a.T @ a).eigenvectors[:, -1].float()
    assert abs(float(dirs[0] @ top)) == pytest.approx(1.0, abs=1e-4)
    # the official e4e mapping reads the same weights for layers [2, 3] but edits rows [1, 2]
    names, official_rows = editing.sefa_official_rows([2, 3], gen.num_layers)
    assert names == ["convs.1", "convs.2"] and official_rows == [1, 2]
    assert editing.sefa_directions(gen, rows=[2, 3])[2] == [2, 3]
    _, all_rows = editing.sefa_official_rows("all", gen.num_layers)
    assert all_rows == list(range(gen.num_layers - 1))
    assert editing.sefa_directions(gen)[2] == list(range(gen.num_layers))
    assert editing.sefa_directions(gen, include_torgb=True)[2] == list(range(gen.n_latent))
