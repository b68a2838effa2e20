# CenterNet with the searched ODBB-B3 backbone on COCO (RepNAS Table 5): as
# centernet_odbb_a0_coco.py, with CenterNet's recipe for the large backbone: batch 96,
# Adam lr 3.75e-4, no weight decay, 140 epochs; started from configs/odbb_b3_imagenet.py.
#   bash tools/dist_train.sh configs/centernet_odbb_b3_coco.py 8
_base_ = './centernet_odbb_a0_coco.py'

model = dict(
    backbone=dict(
        arch='B3', branches='work_dirs/odbb_b3_imagenet/epoch_240.pth'),
    neck=dict(in_channels=2560))
train_dataloader = dict(batch_size=12)  # x 8 GPUs = 96
optim_wrapper = dict(optimizer=dict(lr=3.75e-4))
auto_scale_lr = dict(base_batch_size=96)
