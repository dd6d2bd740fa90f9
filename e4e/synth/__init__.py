"""e4e/synth"""
