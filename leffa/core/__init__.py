"""The model and its maths: base configs, the Leffa model on stock diffusers parts, attention processors,
sampler, tensor transforms, checkpoint I/O, flow fields and the training objective.

Nothing here imports from :mod:`leffa.inspect`, :mod:`leffa.app` or :mod:`leffa.eval`.
"""
