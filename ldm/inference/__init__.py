"""Inference with a trained VIDM: the 4-frame demo and whole-video agent/environment factorisation."""
