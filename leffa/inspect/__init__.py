"""Seeing what the model attends to: one sampler run traced per layer and timestep, rendered as heatmaps,
flow colour wheels and warped references. Builds on :mod:`leffa.core`."""
