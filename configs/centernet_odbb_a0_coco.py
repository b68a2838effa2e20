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

# The classification run this detector starts from. To use another, override
# model.backbone.branches and model.backbone.init_cfg.checkpoint (--cfg-options).
classification_run = 'work_dirs/odbb_a0_imagenet'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ODBBNet',
        arch='A0',
        # the searched architecture (a searched_arch.json, or the run's
        # checkpoint, which carries it) is rebuilt before weights load
        branches=classification_run + '/searched_arch.json',
        out_indices=(3, ),
        init_cfg=dict(
            type='Pretrained',
            checkpoint=classification_run + '/epoch_150.pth',
            prefix='backbone.')),
    neck=dict(in_channels=1280))

# CenterNet's recipe for the small backbone (RepNAS Table 1): batch 114, Adam lr 5e-4,
# no weight decay (no gradient clipping, as in CenterNet).
train_dataloader = dict(batch_size=19)  # x 6 GPUs = 114
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='Adam', lr=5e-4, weight_decay=0.0))
auto_scale_lr = dict(base_batch_size=114)
