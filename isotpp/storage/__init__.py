"""Files: atomic output, checked ``.npz`` reading, and the one
artefact format of model files, AutoSparse scorers and IRP records (:mod:`isotpp.storage.artifact`), and fault injection for the tests;
run directories are :mod:`isotpp.studies.rundir`."""
