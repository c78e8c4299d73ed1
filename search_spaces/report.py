"""The report's seven configurations, exactly: a grid, no early stopping.

FCN ResNet-50 {scratch, finetune, freeze} and SegFormer {scratch, finetune, finetune with lr
halved, freeze}; lr 1e-3 (halved 5e-4), gamma 0.98, 30 epochs, batch 64, 64x64 on Pets.
SegFormer's encoder is first pretrained on Cityscapes by the study itself.
"""

LR, GAMMA = 1e-3, 0.98

PRESET = {
    "dataset": "pets",
    "epochs": 30,
    "batch_size": 64,
    "image_size": "64",
    "val_every": 2,
    "scheduler": "fifo",
    "searcher": "grid",
    "space": {},
    "points": [
        {"model": "fcn_resnet50", "init": "scratch", "lr": LR, "gamma": GAMMA},
        {"model": "fcn_resnet50", "init": "finetune", "lr": LR, "gamma": GAMMA},
        {"model": "fcn_resnet50", "init": "freeze", "lr": LR, "gamma": GAMMA},
        {"model": "segformer", "init": "scratch", "lr": LR, "gamma": GAMMA},
        {"model": "segformer", "init": "finetune", "lr": LR, "gamma": GAMMA},
        {"model": "segformer", "init": "finetune", "lr": LR / 2, "gamma": GAMMA},
        {"model": "segformer", "init": "freeze", "lr": LR, "gamma": GAMMA},
    ],
    "pretrain": {"models": ["segformer"], "dataset": "cityscapes", "image_size": "64x128", "epochs": 30,
                 "batch_size": 64, "lr": LR, "gamma": GAMMA},
}
