"""The one table of inversion methods. Everything that needs to know which methods exist, which of
them train an encoder, which refine iteratively and which grow their W+ rows progressively reads it
from here: the config's choices, the trainer, the grid and the checkpoint loader.

- ``trained``: an encoder is trained (``e4e.train``); otherwise the method optimises codes per image
  at evaluation time (``baselines.optim``, nothing trained).
- ``family``: the encoder architecture's family as the checkpoint loader recognises it from state-dict
  keys (``pyramid`` = the FPN encoders of pSp/e4e, ``single`` = one w, ``restyle`` = ReStyle's
  backbone encoders, ``optim`` = no encoder).
- ``iterative``: ReStyle-style residual refinement over several passes.
- ``progressive``: e4e's flavour (offsets added row by row, delta-regularisation, latent D apply).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Method", "METHODS", "TRAINED_METHODS", "OPTIM_METHODS", "FAMILIES"]


@dataclass(frozen=True)
class Method:
    name: str
    trained: bool
    family: str
    iterative: bool
    progressive: bool
    words: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("e4e", True, "pyramid", False, True,
           "e4e encoder (Encoder4Editing: one shared w plus per-layer offsets, codes in W^k)"),
    Method("psp", True, "pyramid", False, False, "pSp encoder (GradualStyleEncoder: one code per W+ row)"),
    Method("w_encoder", True, "single", False, False, "W encoder (a single w repeated over the W+ rows)"),
    Method("restyle_e4e", True, "restyle", True, True,
           "ReStyle with e4e's encoder and losses (iterative residual refinement)"),
    Method("restyle_psp", True, "restyle", True, False,
           "ReStyle with pSp's encoder and losses (iterative residual refinement)"),
    Method("optim_w", False, "optim", True, False,
           "optimisation baseline: a single w optimised per image at evaluation time (nothing trained)"),
    Method("optim_wplus", False, "optim", True, False,
           "optimisation baseline: W+ codes optimised per image at evaluation time (nothing trained)"),
    Method("optim_from_encoder", False, "optim", True, False,
           "optimisation baseline: W+ codes optimised per image, started from the trained e4e member's inversion"),
)}
TRAINED_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.trained)
OPTIM_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if not m.trained)
FAMILIES: dict[str, tuple[str, ...]] = {}
for _m in METHODS.values():
    FAMILIES.setdefault(_m.family, ())
    FAMILIES[_m.family] += (_m.name,)
del _m


def load_inverters() -> dict:
    """Import the modules that register the trained methods' inverters (``e4e.inverters.encoder``,
    ``e4e.inverters.restyle``) and return the registry. The optimisation baselines register when
    ``baselines.optim`` is imported, which only the experiments do (imports run downward)."""
    import e4e.inverters.encoder  # noqa: F401
    import e4e.inverters.restyle  # noqa: F401
    from e4e.inverters.base import INVERTERS

    return INVERTERS
