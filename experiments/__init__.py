"""Library code of the study scripts (scripts/coord_check.py, scripts/lr_transfer.py, scripts/paper/): many runs of
train.py's trainer (train_runs) and the paper's small MLP experiments (mlp). Above the training loop and reporting
in the import order; the scripts are thin CLIs over it."""
