# Fine-tuning mmpretrain's CIFAR ResNet-18 from a trained checkpoint (load_from): the baseline of
# the RefConv fine-tune (resnet18_cifar10_refocus.py), which changes only the backbone. SGD at a
# tenth of the training lr, cosine over 3 epochs. Set data_root (or --cfg-options) to your folder.
#   python tools/train.py configs/resnet18_cifar10_folders.py
#   python tools/train.py configs/resnet18_cifar10_finetune.py
_base_ = './resnet18_cifar10_folders.py'

load_from = 'work_dirs/resnet18_cifar10_folders/epoch_20.pth'
optim_wrapper = dict(optimizer=dict(lr=0.01))
max_epochs = 3
param_scheduler = dict(T_max=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
