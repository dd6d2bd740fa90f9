"""Inversion methods: the ``Inverter`` interface and its registry (``base``), the one method table
(``methods``), the encoder inverters (``encoder``: e4e, pSp, W encoder) and ReStyle's iterative ones
(``restyle``). The optimisation baselines' inverters are in ``baselines.optim``. Importing this
package imports no model code: ``load_inverters()`` imports the modules that register the trained
methods.
"""
from e4e.inverters.base import INVERTERS, Inverter, get_inverter, register_inverter
from e4e.inverters.methods import FAMILIES, METHODS, OPTIM_METHODS, TRAINED_METHODS, Method, load_inverters

__all__ = ["Inverter", "INVERTERS", "register_inverter", "get_inverter", "Method", "METHODS", "TRAINED_METHODS",
           "OPTIM_METHODS", "FAMILIES", "load_inverters"]
