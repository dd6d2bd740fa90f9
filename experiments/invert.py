"""Invert a folder of images with any method: a trained / official checkpoint, or an optimisation
baseline on a generator.

    python -m experiments.invert --checkpoint runs/synth/e4e-.../best_inverter.pt --images data/synth/test --out out/e4e
    python -m experiments.invert --method optim_wplus --generator G.pt --images imgs/ --out out/proj projection.steps=200
    python -m experiments.invert --method optim_from_encoder --encoder e4e.pt --generator G.pt --images imgs/ --out out/idi

Images are read with ``e4e.data.load_image`` (RGB, bilinear antialiased resize). Writes
``<out>/latents.pt`` ({'names', 'latents' [N, n_latent, D], 'method', 'source'}) and
``<out>/recon/<name>.png``. Unreadable images are skipped and listed in ``<out>/skipped.txt`` (or
stop the run with ``--fail-fast``, exit code 3). Images are resized to the inverter's input size.

Real face photos must be FFHQ-aligned first (the crop the face encoders were trained on); a folder at
a time, in parallel and resumable:

    e4e-align photos/ aligned/ --size 1024      # python -m experiments.align; --help for the options
    python -m experiments.invert --checkpoint e4e_ffhq_encode.pt --images aligned/ --out out/e4e
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e4e.cli import (Parser, add_allow_pickle_flag, add_device_flag, add_tracking_flag, allow_pickle, check_out_dir,
                     guarded, positive_int)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.invert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True,
                   help="folder of .png/.jpg/.jpeg images (e4e.data conventions); face photos aligned with e4e-align")
    p.add_argument("--out", required=True, help="output folder")
    src = p.add_argument_group("method")
    src.add_argument("--checkpoint", help="inverter checkpoint (official e4e / pSp / ReStyle or this project's)")
    src.add_argument("--method", help="optimisation method: optim_w | optim_wplus | optim_from_encoder "
                                      "(encoder methods come from --checkpoint)")
    src.add_argument("--generator", help="generator .pt for optimisation methods (default: the domain's)")
    src.add_argument("--encoder", help="optim_from_encoder: the encoder checkpoint giving the start codes")
    src.add_argument("--config", action="append", default=[], metavar="YAML",
                     help="experiment YAML for the projection settings / domain (optional)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per batch (default: 8)")
    add_device_flag(p)
    p.add_argument("--fail-fast", action="store_true", help="stop at the first unreadable image")
    p.add_argument("--no-recon", action="store_true", help="do not write reconstruction PNGs")
    add_allow_pickle_flag(p)
    add_tracking_flag(p, "; where runs:/<run_id>/inverter.pt checkpoints are downloaded from")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. projection.steps=200 projection.fallback=l2")
    return p


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def fetch_artifacts(args) -> None:
    """``--checkpoint`` / ``--encoder`` / ``--generator`` given as MLflow artifact URIs (``runs:/...``)
    replaced by their local copies, downloaded from ``--tracking-uri`` (a sqlite store or a server)."""
    from e4e.tracking import check_store, fetch_artifact, is_artifact_uri

    for name in ("checkpoint", "encoder", "generator"):
        value = getattr(args, name)
        if is_artifact_uri(value):
            setattr(args, name, str(fetch_artifact(value, check_store(args.tracking_uri, must_exist=True))))


def build_inverter(args, device):
    """(inverter, description) from the CLI arguments."""
    from e4e import config as C
    from e4e.inverters import load_inverters

    load_inverters()
    if args.checkpoint and not args.method:
        from e4e.checkpoints import load_inverter

        return load_inverter(args.checkpoint, allow_pickle=allow_pickle(args)).to(device).eval(), args.checkpoint
    if not args.method:
        raise C.ConfigError("give --checkpoint (an encoder) or --method (an optimisation baseline)")
    from baselines import optim as O

    dotlist = list(args.overrides) + [f"model.method={args.method}"]
    if args.generator:
        dotlist.append(f"model.generator={args.generator}")
    cfg = C.build_config(args.config, dotlist)
    generator = None
    if args.generator:
        from e4e.checkpoints import load_generator

        generator = load_generator(args.generator, allow_pickle=allow_pickle(args))
    inv = O.build_inverter(args.method, cfg, encoder_checkpoint=args.encoder or args.checkpoint,
                           generator=generator, device=device)
    inv.progress = False
    return inv.to(device), f"{args.method} ({getattr(inv, 'perceptual', '')})"


@guarded(ValueError)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from e4e.progress import track

    from e4e.data import IMAGE_EXTENSIONS, list_images, load_image
    from e4e.cli import resolve_device

    device = resolve_device(args.device)
    out = check_out_dir(args.out)
    paths = list_images(Path(args.images))
    fetch_artifacts(args)
    inverter, source = build_inverter(args, device)
    if not paths:
        print(f"error: no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.images}", file=sys.stderr)
        return 2
    (out / "recon").mkdir(parents=True, exist_ok=True)
    size_hw = _size_hw(inverter.input_size)

    names, latents, skipped = [], [], []
    from torchvision.utils import save_image

    def flush(batch, bnames):
        x = torch.stack(batch).to(device)
        with torch.no_grad():
            w = inverter.invert(x)
            if not args.no_recon:
                from e4e.losses import match_size

                y = match_size(inverter.generate(w), x.shape[-2:]).clamp(-1, 1)
                for name, img in zip(bnames, y):
                    save_image(img.cpu(), out / "recon" / f"{Path(name).stem}.png", normalize=True,
                               value_range=(-1, 1))
        names.extend(bnames)
        latents.append(w.cpu())

    batch, bnames = [], []
    for path in track(paths, f"invert ({source})", unit="img"):
        try:
            img = load_image(path, size_hw)
        except ValueError as e:  # e4e.data: unreadable / corrupt / not an image
            if args.fail_fast:
                print(f"error: {e}", file=sys.stderr)
                return 3
            skipped.append(f"{path}\t{e}")
            continue
        batch.append(img)
        bnames.append(path.name)
        if len(batch) == args.batch_size:
            flush(batch, bnames)
            batch, bnames = [], []
    if batch:
        flush(batch, bnames)
    result = {"names": names, "latents": torch.cat(latents) if latents else torch.empty(0),
              "method": getattr(inverter, "method", ""), "source": source}
    torch.save(result, out / "latents.pt")
    (out / "skipped.txt").write_text("".join(s + "\n" for s in skipped))
    print(json.dumps({"inverted": len(names), "skipped": len(skipped), "latents": str(out / "latents.pt"),
                      "method": result["method"]}, indent=1))
    if skipped:
        print("skipped (unreadable):\n  " + "\n  ".join(skipped), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
