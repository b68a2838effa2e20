# The demo's search (./odbb_fmnist_cls.py: small ODBBNet, 32x32, budget half the branches) on the
# CIFAR-10 subset that ships in datasets/ (2,700 train / 600 val / 300 held-out test real images;
# python tools/prepare_demo_data.py --cifar10-out data/cifar10_subset writes it). Search 6
# epochs (warm-up 2), then retrain the searched network for 20 (about 2.5 min a run on a 2-core
# CPU; docs/ablation.md). ~94 iterations an epoch: alpha's Adam takes a step between the demo's
# and ImageNet's.
_base_ = './odbb_fmnist_cls.py'

data_root = 'data/cifar10_subset'
data_preprocessor = dict(
    mean=[125.307, 122.961, 113.8575],
    std=[51.5865, 50.847, 51.255],
    to_rgb=True)
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
optim_wrapper = dict(alpha_optimizer=dict(lr=4e-3))
search_epochs = 6
max_epochs = search_epochs + 20
custom_hooks = [
    dict(_base_.repnas_hook, budget=0.5, warmup_epochs=2, fix_epoch=search_epochs,
         at_fix='retrain')
]
param_scheduler = dict(T_max=max_epochs - search_epochs, begin=search_epochs, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
