"""Logging a run to experiment trackers (MLflow, Weights & Biases) beside emkit's own store.

Trackers are plugins (``register_trackers``; plugins/mlflow_tracker.py, plugins/wandb_tracker.py).
emkit's store stays the record: ``records`` says what is logged under which names, read from
the store and the run's tables; ``sync`` sends what a tracker does not have yet and remembers,
in the store, each training run's id there and what it was sent, so a resumed run goes on in
the same tracked run and nothing is sent twice. A tracker that fails is a warning: the run
goes on, and the next `emkit run` sends what is missing.
"""
