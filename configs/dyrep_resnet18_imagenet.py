# DyRep on ImageNet-1k: mmpretrain's stock ResNet-18 recipe (100 epochs, batch 256, SGD 0.1) with
# every 3x3/7x7 Conv+BN pair of the backbone an ODBB that starts as exactly that conv and BN.
# Every 5 epochs DyRepHook de-parameterizes weak branches and grows the most salient conv
# (synflow) to the DBB branches, each time without changing the network's function; fused at
# the end (tools/deploy.py), it is the stock ResNet-18 again (loads with strict=True).
#   bash tools/dist_train.sh configs/dyrep_resnet18_imagenet.py 8
_base_ = [
    'mmpretrain::resnet/resnet18_8xb32_in1k.py', './_base_/settings/dyrep.py'
]

custom_imports = dict(imports=['repnas_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ODBBConverted',
        backbone=dict(
            type='ResNet',
            depth=18,
            num_stages=4,
            out_indices=(3, ),
            style='pytorch'),
        branches='dbb'))
