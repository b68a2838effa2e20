# Demo: the RepNAS ImageNet search (../odbb_a0_imagenet.py), shrunk to Fashion-MNIST
# (tools/prepare_demo_data.py) on a CPU: a small ODBBNet layout (7 blocks, 44 legal branches),
# 32x32 input, half the branches kept, a few epochs. Everything else is inherited.
_base_ = '../odbb_a0_imagenet.py'

data_root = 'data/demo/fmnist'
model = dict(
    backbone=dict(
        arch=dict(
            _delete_=True,
            name='demo',
            stem_channels=16,
            channels=(16, 32, 64, 128),
            num_blocks=(1, 2, 2, 1),
            strides=(2, 2, 2, 2))),
    head=dict(num_classes=10, in_channels=128, topk=(1, )))
data_preprocessor = dict(
    num_classes=10, mean=[72.94] * 3, std=[90.02] * 3, to_rgb=False)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=32),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=32),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=100,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        pipeline=test_pipeline))
# Final numbers come from a held-out split that no choice was made on (the
# schedule, budget and learning rates were chosen on val).
test_dataloader = dict(
    val_dataloader, dataset=dict(val_dataloader['dataset'], data_prefix='test'))
val_evaluator = dict(topk=(1, ))
test_evaluator = val_evaluator

# ~60 iterations an epoch instead of ImageNet's ~5,000: alpha needs a larger step to move
# past the logistic noise (std 1.8) within a few epochs.
optim_wrapper = dict(optimizer=dict(lr=0.05), alpha_optimizer=dict(lr=0.02))
# Search 3 epochs (warm-up 1), then retrain the searched network from the run's starting weights
# for 6 (constant lr while searching, cosine for the searched network). At this scale the
# paper's one-stage run (fix and train on) ends 8 points below the architecture it found
# retrained; this gets all of it back (docs/ablation.md).
search_epochs = 3
max_epochs = search_epochs + 6
custom_hooks = [
    dict(_base_.repnas_hook, budget=0.5, warmup_epochs=1, fix_epoch=search_epochs,
         at_fix='retrain')
]
param_scheduler = dict(T_max=max_epochs - search_epochs, begin=search_epochs, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
default_hooks = dict(logger=dict(interval=20))
randomness = dict(seed=0)
