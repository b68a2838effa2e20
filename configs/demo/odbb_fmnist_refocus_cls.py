# RefConv fine-tuning, the second stage after a search (../../docs/refconv.md): the demo's
# searched-and-fused classifier with every 3x3 conv a RefConv (kernel frozen, a zero-initialised
# refocusing transform learned), on the schedule of its baseline, odbb_fmnist_finetune_cls.py
# (which says how to make the fused checkpoint).
#   python tools/train.py configs/demo/odbb_fmnist_refocus_cls.py
#   python tools/deploy.py configs/demo/odbb_fmnist_refocus_cls.py \
#       work_dirs/odbb_fmnist_refocus_cls/epoch_3.pth \
#       --work-dir work_dirs/odbb_fmnist_refocus_cls/deploy
_base_ = './odbb_fmnist_finetune_cls.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='RefConvConverted',
        backbone=_base_.model.backbone,
        input_size=32))
