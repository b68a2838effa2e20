# The demo's search (./odbb_fmnist_cls.py) on all of Fashion-MNIST: 60,000 training images, the
# 10,000 test images split into val and a held-out test set (tools/prepare_demo_data.py --out
# data/demo/fmnist_full --train-per-class 6000 --val-per-class 500 --test-per-class 500).
# Sized for a 2-core CPU: the search runs one epoch, then the searched network is retrained for
# two (about 5 min a run; docs/ablation.md). 1,875 iterations an epoch instead of the demo's 63,
# so alpha's Adam takes a 15x smaller step.
_base_ = './odbb_fmnist_cls.py'

data_root = 'data/demo/fmnist_full'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
optim_wrapper = dict(alpha_optimizer=dict(lr=1.5e-3))
search_epochs = 1
max_epochs = search_epochs + 2
custom_hooks = [
    dict(_base_.repnas_hook, budget=0.5, warmup_epochs=0, fix_epoch=search_epochs,
         at_fix='retrain')
]
param_scheduler = dict(T_max=max_epochs - search_epochs, begin=search_epochs, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
default_hooks = dict(logger=dict(interval=100))
