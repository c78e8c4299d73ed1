"""Optuna (TPE) over model x init x lr x gamma, with ASHA stopping weak trials early.

lr's log-uniform range [1e-4, 3e-3] covers the report's 1e-3 and its halving (5e-4).
"""

from search_spaces.report import PRESET as REPORT

REPORT_POINTS = REPORT["points"]

PRESET = {
    "dataset": "pets",
    "epochs": 30,
    "batch_size": 64,
    "image_size": "64",
    "val_every": 2,
    "num_samples": 24,
    "scheduler": "asha",
    "grace_period": 4,
    "reduction_factor": 2,
    "searcher": "optuna",
    "space": {
        "model": ("choice", ["fcn_resnet50", "segformer"]),
        "init": ("choice", ["scratch", "finetune", "freeze"]),
        "lr": ("loguniform", 1e-4, 3e-3),
        "gamma": ("uniform", 0.90, 0.999),
    },
    # TPE is warm-started with the report's seven configurations, then explores.
    "points": [dict(point) for point in REPORT_POINTS],
    "pretrain": {"models": ["segformer"], "dataset": "cityscapes", "image_size": "64x128", "epochs": 30,
                 "batch_size": 64, "lr": 1e-3, "gamma": 0.98},
}
