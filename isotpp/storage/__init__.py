"""Everything isotpp writes to or reads from disk: atomic output, checked ``.npz`` reading, and the one
artefact format of model files, AutoSparse scorers and IRP records (:mod:`isotpp.storage.artifact`)."""
