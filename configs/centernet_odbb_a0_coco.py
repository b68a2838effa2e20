# CenterNet with the searched ODBB-A0 backbone on COCO (RepNAS Sec. 4.4, Table 5): mmdet's stock
# CenterNet (ResNet-18 recipe, DCNv2 up-convs, 512x512 crops, 28 epochs x RepeatDataset 5 = 140)
# with ODBBNet-A0 in place of ResNet-18, started from the classification search
# (python tools/train.py configs/odbb_a0_imagenet.py) and fine-tuned with its searched
# multi-branch architecture fixed. Fuse it afterwards with tools/deploy.py.
# COCO at data/coco as mmdet expects.
#   python tools/train.py configs/centernet_odbb_a0_coco.py
#   bash tools/dist_train.sh configs/centernet_odbb_a0_coco.py 6
# Other starts: centernet_odbb_a0_fused_coco.py (the fused plain network),
# centernet_odbb_a0_search_coco.py (go on searching on COCO); _nodcn: plain up-convs.
_base_ = 'mmdet::centernet/centernet_r18-dcnv2_8xb16-crop512-140e_coco.py'

custom_imports = dict(imports=['repnas_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ODBBNet',
        arch='A0',
        # The classification search this detector starts from: its checkpoint carries the
        # searched architecture (rebuilt first) and the weights (Pretrained, below). Another
        # run is this one override: --cfg-options model.backbone.branches=<run>/epoch_N.pth
        branches='work_dirs/odbb_a0_imagenet/epoch_150.pth',
        out_indices=(3, ),
        # no checkpoint: the one `branches` names
        init_cfg=dict(type='Pretrained', prefix='backbone.')),
    neck=dict(in_channels=1280))

# CenterNet's recipe for the small backbone (RepNAS Table 1): batch 114, Adam lr 5e-4,
# no weight decay (no gradient clipping, as in CenterNet).
train_dataloader = dict(batch_size=19)  # x 6 GPUs = 114
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='Adam', lr=5e-4, weight_decay=0.0))
auto_scale_lr = dict(base_batch_size=114)
