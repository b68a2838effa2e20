# RefConv fine-tuning of mmpretrain's CIFAR ResNet-18 (../docs/refconv.md): every 3x3 conv a
# RefConv starting from the trained kernel (frozen), whose zero-initialised refocusing transform
# trains with the BNs and the head; the schedule is resnet18_cifar10_finetune.py's (the
# baseline). tools/deploy.py fuses the result into the stock ResNet_CIFAR (strict load).
#   python tools/train.py configs/resnet18_cifar10_refocus.py
#   python tools/deploy.py configs/resnet18_cifar10_refocus.py \
#       work_dirs/resnet18_cifar10_refocus/epoch_3.pth \
#       --work-dir work_dirs/resnet18_cifar10_refocus/deploy
_base_ = './resnet18_cifar10_finetune.py'

custom_imports = dict(imports=['repnas_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='RefConvConverted',
        backbone=_base_.model.backbone,
        input_size=32))
