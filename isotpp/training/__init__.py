"""Training: one engine, two regimes, and which layer owns which file.

The engine is :mod:`isotpp.training.engine`: the step, the evaluation step
and the divergence check, each once, and the epoch order of
:func:`isotpp.data.pipeline.epoch_batches`. Its two drivers:

* :class:`isotpp.training.engine.RunGroup` — a stack of small runs vmapped together,
  epochs scanned on the device (the linear study, PaI, IRP);
* :class:`isotpp.training.sharded.Trainer` —
  one model, a jitted data-parallel step per batch (``isotpp prune``,
  ``isotpp train``).

Both report progress through :func:`isotpp.progress.progress` (``enabled=``
a bool; the Trainer passes False on processes other than 0) and write:

==============================  ===============================================
file                            owner
==============================  ===============================================
``metrics.jsonl``               :class:`isotpp.training.metrics.MetricsWriter`
                                (process 0 only), called by the Trainer in its
                                workdir and by a study's ``Study.record``
``checkpoints/<step>/``         :class:`isotpp.training.checkpoint.TrainCheckpointer`
                                (orbax: state arrays + JSON meta), called by
                                ``Trainer`` and by ``RunGroup.save/restore``
``config.json`` (a workdir)     the Trainer
study cells, ``results.json``   the study scaffold (:mod:`isotpp.studies.scaffold`)
model files (``.npz``)          :mod:`isotpp.pruning.model_file`, called by the commands
                                and stages, never by the engine
==============================  ===============================================
"""
