"""Paper-shape dry runs of the four real domains (issue 29): the user's commands, end to end, on
stand-in files laid out as the official ones, checking what each stage hands its networks.

Per domain (ffhq, cars, horse, church), under pytest's temporary folders:

- TEST-ONLY stand-ins (random weights, ``tests/standins.py``) under the registry's file names: the
  rosinality-format StyleGAN2 generator (``g_ema`` + ``latent_avg``) at the domain's real resolution,
  style_dim 512, 8 mapping layers, channel multiplier 2 (config-f); ``model_ir_se50.pth`` (ffhq) or
  ``moco_v2_800ep_pretrain.pt`` (cars, horse, church); the LPIPS-alex and FID Inception trunks; an
  editing direction for LEC. ``E4E_WEIGHTS`` and ``TORCH_HOME`` point at that folder (monkeypatch) and
  the working directory is the test's folder, so the registry finds nothing else (``./weights`` and
  ``./data``, the default folders, are the test's own);
- images of the domain's size: FFHQ 1024x1024, LSUN horse / church 256x256, cars 384x512 (H x W: the
  3:4 car of the 512 px generator frame, resized to the 192x256 encoder input);
- the user's commands through their ``main()``, on one MLflow store (sqlite, in a temporary folder):
  ``experiments.train`` with the domain config + e4e.yaml (progressive stages, latent discriminator,
  delta-reg, LPIPS and the identity loss on, as in the paper; 2 steps), ``experiments.evaluate`` (the
  metric list of the domain's paper grid, plus ``lec_standin_3``), ``experiments.grid run`` of a grid
  file that extends the domain's paper grid (members e4e and psp) and ``experiments.report``.

What is checked (``Probe`` wraps a few library functions and puts forward hooks on the networks,
through ``monkeypatch``; the library has no test hook):

- generator output S x S (1024 / 512 / 256) and W+ codes of 18 / 16 / 14 rows everywhere; in each e4e
  training step the progressive stage of the paper schedule scaled to the run, rows past it exactly w0;
- the loss input (L2, LPIPS, identity; the encoder's input there) and every metric's input (the
  reconstructions of ``EvalContext.inversions``) are the domain's evaluation size, 256x256 or 192x256
  for cars, and equal the official ``face_pool`` of the generator output: 1024 -> 4x4 average pooling;
  cars: rows 64:448 of the 512 px frame (the 384-row car) pooled 2x2, i.e. the official pool to 256 and
  crop to rows 32:224; 256 px as they are;
- the LEC re-inversion input (the edited inversions G(E(x) + s*d) that go back into the encoder) has
  the same size and crop, and the encoder sees the evaluation size there too;
- ArcFace gets the 112x112 face crop, MoCo 224x224, the FID Inception 299x299, the latent
  discriminator 512-d rows; every metric is available and finite (but ``lec_official_*``, which needs
  batches of 8 images);
- the grid's members finish with their ``test/*`` values; the report writes the ablation table.

Reduced, because a 2-core CPU runner has about 3-4 minutes for this file and one config-f generator
forward + backward takes ~5 s at 256 px and ~15-18 s at 1024 px on one busy core (the generators,
ArcFace, MoCo, LPIPS and Inception stay full size):

- the encoders use the ``model.encoder.small`` preset (IR-SE trunk at width 0.125, one block per stage):
  the full e4e encoder (IR-SE-50 and 512-channel map2style blocks) has ~200 M parameters, ~1 GB per
  checkpoint and ~40 GMACs per 256 px image. The preset keeps the input size, the three pyramid levels
  and the W+ rows;
- batch 1 and one training image; ``train`` runs 2 steps, each grid member 1;
- ``evaluate`` runs on two test images (one batch; FID needs two), the grid members on one, without
  FID and without the qualitative grid (``n_images: 0``); the evaluation code is the same function;
- the report runs one of the five notebooks (the ablation table).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from standins import write_test_only_standins
from test_grid import child_runs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
GRIDS = REPO / "experiments" / "grids"

# the paper's geometry, stated here independently of e4e.data.DOMAINS (which is checked against it):
# generator px, W+ rows, evaluation / encoder input (h, w), identity network, image files (h, w),
# and the official face_pool: rows of the generator frame that hold the image, pooling factor
PAPER = {
    "ffhq": dict(size=1024, rows=18, hw=(256, 256), identity="arcface", files=(1024, 1024), frame=(0, 1024), pool=4),
    "cars": dict(size=512, rows=16, hw=(192, 256), identity="moco", files=(384, 512), frame=(64, 448), pool=2),
    "horse": dict(size=256, rows=14, hw=(256, 256), identity="moco", files=(256, 256), frame=(0, 256), pool=1),
    "church": dict(size=256, rows=14, hw=(256, 256), identity="moco", files=(256, 256), frame=(0, 256), pool=1),
}
DIRECTION = "standin"                 # the test-only editing direction written next to the stand-ins
LEC = f"lec_{DIRECTION}_3"
SMALL = ["model.encoder.small=true"]  # see the module docstring: the reduced encoder
REPORT_NOTEBOOKS = ["01_ablation_table.ipynb"]


def official_pool(raw: torch.Tensor, domain: str) -> torch.Tensor:
    """The image the paper's losses and metrics see of a generator output: the frame's rows, pooled."""
    p = PAPER[domain]
    top, bottom = p["frame"]
    y = raw[..., top:bottom, :]
    return F.avg_pool2d(y, p["pool"]) if p["pool"] > 1 else y


# ---------------------------------------------------------------------------------------------
# instrumentation
# ---------------------------------------------------------------------------------------------
class Probe:
    """Records, per phase (the command running), what the library hands its networks. Installed with
    ``monkeypatch`` (wrapped functions) and global forward hooks, removed after the test."""

    def __init__(self, monkeypatch, domain: str):
        from e4e.identity import ArcFaceIdentity, MocoIdentity
        from e4e.inverters.base import Inverter
        from e4e.models.encoders import Encoder4Editing, GradualStyleEncoder
        from e4e.models.latent_disc import LatentCodesDiscriminator
        import e4e.losses as L
        import lpips
        import metrics.lec as lec
        from metrics.registry import EvalContext
        from pytorch_fid.inception import InceptionV3

        self.domain, self.phase, self.in_lec, self.in_loss = domain, "", False, False
        self.log: dict[tuple[str, str], list] = defaultdict(list)
        self.expected: list[torch.Tensor] = []   # official_pool of every generator output of the phase
        probe = self

        def generate(inv, *a, **k):
            out = orig_generate(inv, *a, **k)
            probe.add("generator", tuple(out.shape))
            probe.expected.append(official_pool(out.detach().float().cpu(), domain))
            return out

        def l2_loss(y_hat, y):
            probe.add("loss:l2", (tuple(y_hat.shape), tuple(y.shape)))
            probe.check_pooled("loss:l2", y_hat)
            return orig_l2(y_hat, y)

        def recon_loss(module, y_hat, y):
            probe.in_loss = True
            try:
                return orig_recon(module, y_hat, y)
            finally:
                probe.in_loss = False

        def inversions(ctx):
            out = orig_inversions(ctx)
            for b in out:
                probe.add("metric:x", tuple(b.x.shape))
                probe.add("metric:y", tuple(b.y.shape))
                probe.add("codes", tuple(b.codes.shape))
                probe.check_pooled("metric:y", b.y)
            return out

        def edited_inversions(ctx, direction, strength):
            out = orig_edited(ctx, direction, strength)
            for e in out:
                probe.add("lec:edited", tuple(e.shape))
                probe.check_pooled("lec:edited", e)
            return out

        def edit_cycle(ctx, direction, strength):
            probe.in_lec = True
            try:
                out = orig_cycle(ctx, direction, strength)
            finally:
                probe.in_lec = False
            for c in out:
                probe.add("lec:codes", tuple(c.shape))
            return out

        orig_generate, orig_l2, orig_recon = Inverter.generate, L.l2_loss, L.ReconstructionLoss.forward
        orig_inversions, orig_edited, orig_cycle = EvalContext.inversions, lec.edited_inversions, lec.edit_cycle
        monkeypatch.setattr(Inverter, "generate", generate)
        monkeypatch.setattr(L, "l2_loss", l2_loss)
        monkeypatch.setattr(L.ReconstructionLoss, "forward", recon_loss)
        monkeypatch.setattr(EvalContext, "inversions", inversions)
        monkeypatch.setattr(lec, "edited_inversions", edited_inversions)
        monkeypatch.setattr(lec, "edit_cycle", edit_cycle)

        def shapes(args):
            return tuple(tuple(a.shape) for a in args if torch.is_tensor(a))

        def pre(module, args):
            if isinstance(module, (Encoder4Editing, GradualStyleEncoder)):
                where = "lec:" if probe.in_lec else "loss:" if torch.is_grad_enabled() else "inference:"
                probe.add(f"{where}encoder_in", shapes(args)[0])
            elif isinstance(module, lpips.LPIPS):
                kind = "loss" if probe.in_loss else "metric"
                probe.add(f"{kind}:lpips", shapes(args[:2]))
                if kind == "loss":
                    probe.check_pooled("loss:lpips", args[0])
            elif isinstance(module, (ArcFaceIdentity, MocoIdentity)):
                kind = "loss" if probe.in_loss else "metric"
                probe.add(f"{kind}:identity", shapes(args)[0])
                probe.watch(module.net, "identity_net")
            elif isinstance(module, InceptionV3):
                probe.add("metric:inception", shapes(args)[0])
                probe.watch(module.blocks[0], "inception_net")
            elif isinstance(module, LatentCodesDiscriminator):
                probe.add("latent_d", shapes(args)[0])

        def post(module, args, out):
            if isinstance(module, Encoder4Editing) and module.training:
                probe.add("e4e_train_codes", (module.progressive_stage, out.detach().cpu()))

        self.hooks = [torch.nn.modules.module.register_module_forward_pre_hook(pre),
                      torch.nn.modules.module.register_module_forward_hook(post)]
        self.watched: set[int] = set()

    def watch(self, module, what: str) -> None:
        """Record the inputs of a network's inner module (what it sees after its own resizing)."""
        if id(module) not in self.watched:
            self.watched.add(id(module))
            module.register_forward_pre_hook(lambda m, args: self.add(what, tuple(args[0].shape)))

    def add(self, what: str, value) -> None:
        self.log[(self.phase, what)].append(value)

    def check_pooled(self, what: str, y: torch.Tensor) -> None:
        """``y`` is the official pooling / crop of one of this phase's generator outputs."""
        y = y.detach().float().cpu()
        ok = any(e.shape == y.shape and torch.allclose(e, y, atol=1e-5) for e in reversed(self.expected))
        self.add(f"{what}:is_official_pool", ok)

    def start(self, phase: str) -> None:
        self.phase, self.expected = phase, []

    def get(self, phase: str, what: str) -> list:
        return self.log[(phase, what)]

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


@pytest.fixture
def probe_factory(monkeypatch):
    made = []

    def make(domain):
        made.append(Probe(monkeypatch, domain))
        return made[-1]

    yield make
    for p in made:
        p.close()


# ---------------------------------------------------------------------------------------------
# the test's world: stand-in weights, images, an MLflow store, all under pytest's tmp folders
# ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _threads_from_env():
    """torch threads as OMP_NUM_THREADS says when it is set (conftest's 2 otherwise)."""
    n = os.environ.get("OMP_NUM_THREADS", "")
    if n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))


@pytest.fixture(scope="module")
def test_only_weights(tmp_path_factory):
    """One folder of TEST-ONLY stand-ins for the module (written per domain on first use; ~1 GB,
    removed at the end of the module)."""
    folder = tmp_path_factory.mktemp("test_only_weights")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_direction(folder: Path, domain: str) -> Path:
    """A TEST-ONLY editing direction (unit W direction), found through the registry's search dir."""
    d = torch.randn(1, 512, generator=torch.Generator().manual_seed(7))
    path = folder / "directions" / domain / f"{DIRECTION}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(d / d.norm(), path)
    return path


def write_images(folder: Path, n: int, hw: tuple[int, int], seed: int) -> list[Path]:
    """Smooth random RGB images of size ``hw`` (h, w)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        x = F.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=hw, mode="bicubic", align_corners=False)
        arr = (x[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(np.ascontiguousarray(arr)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (each domain is its own experiment in it): its schema is
    created once."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


@pytest.fixture
def world(test_only_weights, store, tmp_path, monkeypatch):
    """Environment of one domain's run: the registry, the data root, the store, the caches."""
    import torch.hub

    monkeypatch.setenv("E4E_WEIGHTS", str(test_only_weights))
    monkeypatch.setenv("TORCH_HOME", str(test_only_weights / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.delenv("E4E_DIRECTIONS", raising=False)
    monkeypatch.setenv("E4E_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("E4E_PROGRESS", "off")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)          # ./weights and ./data (the trainer's default folders) are the test's
    yield {"root": tmp_path, "weights": test_only_weights, "uri": store}
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)   # the checkpoints (each holds a config-f generator)


# ---------------------------------------------------------------------------------------------
# checks shared by the phases
# ---------------------------------------------------------------------------------------------
def check_generation(probe: Probe, phase: str, domain: str) -> None:
    p = PAPER[domain]
    outs = probe.get(phase, "generator")
    assert outs and all(s[1:] == (3, p["size"], p["size"]) for s in outs), (phase, set(outs))


def check_losses(probe: Probe, phase: str, domain: str, batch: int = 1) -> None:
    p = PAPER[domain]
    img = (batch, 3, *p["hw"])
    assert set(probe.get(phase, "loss:encoder_in")) == {img}
    for term in ("l2", "lpips"):
        got = probe.get(phase, f"loss:{term}")
        assert got and set(got) == {(img, img)}, (phase, term, set(got))
        assert all(probe.get(phase, f"loss:{term}:is_official_pool")), (phase, term)
    # identity loss: both images at the loss size; the networks see ArcFace's face crop / MoCo's 224
    ident = probe.get(phase, "loss:identity")
    assert ident and set(ident) == {img}
    inner = (112, 112) if p["identity"] == "arcface" else (224, 224)
    assert {s[-2:] for s in probe.get(phase, "identity_net")} == {inner}
    # latent discriminator (e4e): codes scored row by row, 512-d
    assert probe.get(phase, "latent_d") and {s[-1] for s in probe.get(phase, "latent_d")} == {512}


def check_progressive(probe: Probe, phase: str, domain: str, stages: list[int]) -> None:
    """Each e4e training forward: the paper's rows, and rows past the stage exactly w0."""
    codes = probe.get(phase, "e4e_train_codes")
    assert [stage for stage, _ in codes] == stages
    for stage, c in codes:
        assert c.shape == (1, PAPER[domain]["rows"], 512)
        assert torch.equal(c[:, stage + 1:], c[:, :1].expand(-1, c.shape[1] - stage - 1, -1))
        assert not torch.equal(c[:, stage], c[:, 0])


def check_metrics(probe: Probe, phase: str, domain: str, n: int, lec: bool = True, fid: bool = True) -> None:
    p = PAPER[domain]
    img = (n, 3, *p["hw"])
    assert set(probe.get(phase, "metric:x")) == set(probe.get(phase, "metric:y")) == {img}
    assert {s[1:] for s in probe.get(phase, "inference:encoder_in")} == {img[1:]}
    assert all(probe.get(phase, "metric:y:is_official_pool"))
    assert set(probe.get(phase, "codes")) == {(n, p["rows"], 512)}
    assert set(probe.get(phase, "metric:lpips")) == {(img, img)}
    assert set(probe.get(phase, "metric:identity")) == {img}
    inner = (112, 112) if p["identity"] == "arcface" else (224, 224)
    assert {s[-2:] for s in probe.get(phase, "identity_net")} == {inner}
    if fid:
        assert set(probe.get(phase, "metric:inception")) == {img}
        assert {s[-2:] for s in probe.get(phase, "inception_net")} == {(299, 299)}
    if not lec:
        return
    # LEC: the edited inversions that are re-inverted, the encoder's input there, the codes after it
    assert set(probe.get(phase, "lec:edited")) == {img}
    assert all(probe.get(phase, "lec:edited:is_official_pool"))
    assert set(probe.get(phase, "lec:encoder_in")) == {img}
    assert set(probe.get(phase, "lec:codes")) == {(n, p["rows"], 512)}


# ---------------------------------------------------------------------------------------------
# the dry runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("domain", list(PAPER))
def test_paper_shapes_through_train_evaluate_grid_and_report(domain, world, probe_factory):
    from mlflow.tracking import MlflowClient

    from e4e.data import DOMAINS
    from e4e.weights import locate
    from experiments import evaluate, report, train
    from experiments.grid import cli as grid_cli
    from experiments.grid import load_grid

    p = PAPER[domain]
    spec = DOMAINS[domain]
    assert (spec.gen_size, spec.n_latent, tuple(spec.enc_input), spec.identity) == (p["size"], p["rows"], p["hw"],
                                                                                   p["identity"])
    root, uri = world["root"], world["uri"]
    standins = write_test_only_standins(world["weights"], domain)
    assert {k: locate(k) for k in standins} == standins   # the registry finds them in the test's folder only
    write_direction(world["weights"], domain)
    write_images(root / "data" / domain / "train", 1, p["files"], seed=1)
    test_images = write_images(root / "data" / domain / "test", 2, p["files"], seed=2)
    paper_grid = load_grid(GRIDS / "paper_ablation.yaml", domain, "paper")
    metric_list = [*paper_grid.evaluate["metrics"], LEC]
    probe = probe_factory(domain)
    client = MlflowClient(uri)

    # -- train: the domain's config and e4e's, everything on, 2 steps ---------------------------
    probe.start("train")
    out = root / "runs" / "train"
    assert train.main(["--config", str(CONFIGS / f"{domain}.yaml"), "--config", str(CONFIGS / "e4e.yaml"),
                       f"out_dir={out}", "max_steps=2", "batch_size=1", "progress=false", *SMALL]) == 0
    check_generation(probe, "train", domain)
    check_losses(probe, "train", domain)
    check_progressive(probe, "train", domain, [1, 2])   # the paper schedule scaled to max_steps=2
    run = client.search_runs([client.get_experiment_by_name(domain).experiment_id])[0]
    final = {k[len("train/"):] for k in run.data.metrics if k.startswith("train/")}
    assert {"loss_l2", "loss_lpips", "loss_id", "loss_delta_reg", "loss_adv", "loss_d",
            "progressive_stage"} <= final
    assert run.data.metrics["train/progressive_stage"] == 2
    assert run.data.tags["loss.identity"] == p["identity"]

    # -- evaluate: the paper grid's metric list and LEC -------------------------------------------
    probe.start("evaluate")
    assert evaluate.main(["--checkpoint", str(out / "inverter.pt"), "--data", str(test_images[0].parent),
                          "--domain", domain, "--metrics", ",".join(metric_list), "--batch-size", "2",
                          "--tracking-uri", uri, "--no-progress", "--out", str(root / "eval")]) == 0
    check_generation(probe, "evaluate", domain)
    check_metrics(probe, "evaluate", domain, n=2)
    res = json.loads((root / "eval" / "metrics.json").read_text())
    assert not res["unavailable"], res["unavailable"]
    expected_keys = {m for m in metric_list if m != "swd"} | {"swd_avg"}
    assert expected_keys <= set(res["values"]) and all(np.isfinite(res["values"][k]) for k in expected_keys)

    # -- grid: the domain's paper grid, two members, a test profile -------------------------------
    probe.start("grid")
    grid_metrics = [m for m in paper_grid.evaluate["metrics"] if m != "fid_inception"]   # FID needs 2 images
    grid_name = f"paper_shapes_{domain}"
    grid_file = root / f"{grid_name}.yaml"
    grid_file.write_text(yaml.safe_dump({
        "extends": str(GRIDS / f"paper_ablation_{domain}.yaml"),
        "grid": grid_name,
        "profiles": {"shapes": {
            "description": "TEST-ONLY paper-shape dry run (tests/test_paper_shapes.py)",
            "overrides": {"max_steps": 1, "batch_size": 1, "progress": False, "model.encoder.small": True},
            "evaluate": {"n_images": 1, "batch_size": 1, "metrics": grid_metrics,
                         "qualitative": {"n_images": 0}}}},
    }, sort_keys=False))
    assert grid_cli.main(["run", str(grid_file), "--profile", "shapes", "--members", "e4e,psp",
                          "--tracking-uri", uri, "--runs-dir", str(root / "runs"), "--jobs", "1",
                          "--no-progress"]) == 0
    check_generation(probe, "grid", domain)
    check_losses(probe, "grid", domain)
    check_progressive(probe, "grid", domain, [1])
    check_metrics(probe, "grid", domain, n=1, lec=False, fid=False)
    runs = {r.data.tags["member"]: r for r in child_runs(uri, grid_name, domain)}
    assert set(runs) == {"e4e", "psp"}
    for name, r in runs.items():
        assert r.info.status == "FINISHED" and r.data.tags["grid.stage"] == "done", (name, r.data.tags.get("error"))
        assert {f"test/{k}" for k in expected_keys if k in grid_metrics or k == "swd_avg"} <= set(r.data.metrics)
        assert not [k for k in r.data.tags if k.startswith("unavailable.")]

    # -- report: the ablation table from the store -----------------------------------------------
    probe.start("report")
    reports = root / "reports"
    assert report.main(["--tracking-uri", uri, "--experiment", domain, "--grid", grid_name, "--out", str(reports),
                        "--notebooks", *REPORT_NOTEBOOKS, "--no-save-executed"]) == 0
    table = (reports / "tables" / "ablation.md").read_text()
    assert "e4e" in table and "psp" in table.lower()
