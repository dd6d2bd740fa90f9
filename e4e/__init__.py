"""e4e-lab: shared model code for the e4e analysis harness (no side effects at import)."""
__version__ = "0.1.0"
