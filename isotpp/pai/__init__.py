"""Pruning at initialisation (PaI) and AutoSparse, through the spectral lens.

============================ ==================================================
``isotpp.pai.masks``         keep-masks from scores: exact counts (round half
                             up), ties broken by index, global or layer-wise
``isotpp.pai.masked_optim``  ``masked(inner, names)``: an optax wrapper whose
                             state holds the masks; pruned weights stay 0
``isotpp.pai.net``           ``PrunableNet``: a model's pure functions, its
                             prunable kernels, loss / SynFlow / g0 closures
``isotpp.pai.scores``        random, magnitude, SNIP, GraSP, SynFlow
``isotpp.pai.registry``       method names (+ai), one-shot masks per density
``isotpp.pai.irp``           iterative rewind pruning and its run record
``isotpp.pai.autosparse``    the scoring MLP: fit, save/load, validate
``isotpp.pai.spectral``      approximate isometry of masks, JSV at init
``isotpp.pai.runs``      many masked runs of one architecture, vmapped
``isotpp.pai.small_convnet``       the small ConvNet (transfer target), im2col conv
============================ ==================================================

The study that puts them together is :mod:`isotpp.studies.pai`
(``isotpp reproduce pai``).
"""
