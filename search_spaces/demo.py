"""The ``search`` shape shrunk to toy size: finishes in about 5 minutes on 2 CPUs.

Toy data in the real layouts, 32x32 images, 6 epochs, 8 trials (the first six: one per model and init), ASHA active.
Offline, torchvision's ImageNet weights for FCN are not available, so the demo pretrains both encoders on (toy)
Cityscapes.
"""

from search_spaces.search import PRESET as SEARCH

PRESET = {
    "dataset": "pets",
    "data_root": "data/toy",
    "toy": True,
    "epochs": 6,
    "batch_size": 16,
    "image_size": "32",
    "val_every": 2,
    "num_samples": 8,
    "scheduler": "asha",
    "grace_period": 2,
    "reduction_factor": 2,
    "searcher": "optuna",
    "space": dict(SEARCH["space"]),  # the search preset's space, at toy size
    # Optuna starts from one trial per (model, init) so the demo shows every strategy; TPE proposes the rest.
    "points": [{"model": m, "init": i, "lr": 1e-3, "gamma": 0.98}
               for m in ("segformer", "fcn_resnet50") for i in ("scratch", "finetune", "freeze")],
    "pretrain": {"models": ["segformer", "fcn_resnet50"], "dataset": "cityscapes", "image_size": "32x64", "epochs": 4,
                 "batch_size": 8, "lr": 1e-3, "gamma": 0.98},
}
