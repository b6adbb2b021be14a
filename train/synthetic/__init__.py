"""Synthetic try-on benchmark: procedurally rendered data with known true flows, its tiny VAE, metrics and runner."""
