"""INT8 deployment (tools/deploy.py --int8) of a quantization-friendly network
searched by RepNAS on real Fashion-MNIST images."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import repnas_mm  # noqa: F401
from repnas_mm.deploy import DeployError, Int8Options, VerifyOptions, deploy

from .conftest import REPO, run_tool

FMNIST = Path('/usr/share/datasets/fashion-mnist')
CLS_CONFIG = REPO / 'configs' / 'demo' / 'odbb_fmnist_cls.py'


@pytest.fixture(scope='module')
def searched_qf(tmp_path_factory):
    """A quantization-friendly ODBBNet searched by RepNAS (one epoch) and
    retrained (two epochs) on 1,000 Fashion-MNIST images; 200 validate,
    200 others test."""
    assert (FMNIST / 'train-images-idx3-ubyte.gz').is_file(), (
        'Debian package dataset-fashion-mnist is not installed (`make test` '
        'installs it as root; or: apt-get install dataset-fashion-mnist)')
    from repnas_mm import demo_data
    root = tmp_path_factory.mktemp('int8')
    data = root / 'fmnist'
    demo_data.write_classification(str(FMNIST), str(data), 100, 20, seed=0,
                                   test_per_class=20)
    # What a user writes: the demo search with quantization-friendly
    # blocks, shortened to one epoch of search and two of retraining.
    config = root / 'odbb_fmnist_qf_cls.py'
    config.write_text(f"""_base_ = '{CLS_CONFIG}'
data_root = '{data}'
model = dict(backbone=dict(form='quant_friendly'))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
train_cfg = dict(max_epochs=3)
param_scheduler = dict(begin=1, T_max=2, end=3)
custom_hooks = [dict(_base_.repnas_hook, budget=0.5, warmup_epochs=0,
                     fix_epoch=1, at_fix='retrain')]
""")
    work = root / 'train'
    proc = run_tool('tools/train.py', config, '--work-dir', work)
    return dict(work=work, config=config, log=proc.stdout + proc.stderr,
                checkpoint=(work / 'last_checkpoint').read_text().strip())


@pytest.mark.slow
def test_the_search_trains_quant_friendly_blocks(searched_qf):
    assert 'RepNAS: 7 blocks, 44 legal branches, budget 22' in \
        searched_qf['log']
    arch = json.loads(
        (searched_qf['work'] / 'searched_arch.json').read_text())
    assert arch['num_branches'] == 22
    state = torch.load(searched_qf['checkpoint'], map_location='cpu',
                       weights_only=False)['state_dict']
    # Every block has its post-BN; the BN-free branches have no BN.
    assert sum(k.endswith('.conv.bn.weight') for k in state) == 7
    assert not any('.branches.identity.bn' in k or '.branches.1x1.bn' in k
                   for k in state)


@pytest.mark.slow
def test_int8_export_runs_in_onnx_runtime_and_keeps_top1(searched_qf,
                                                        tmp_path):
    import onnx
    import onnxruntime as ort
    out = tmp_path / 'deploy'
    result = deploy(str(searched_qf['config']), searched_qf['checkpoint'],
                    str(out), VerifyOptions(num_images=2),
                    int8=Int8Options(calib_images=32))
    int8 = result['int8']
    assert int8['metric'] == 'accuracy/top1' and int8['test_images'] == 200
    assert int8['calibration'] == dict(method='minmax', images=32)
    # A real classifier (chance is 10%), and INT8 within a bound of it.
    assert int8['fp32'] >= 30, int8
    assert abs(int8['drop']) <= 5.0, int8
    assert int8['drop'] == pytest.approx(int8['fp32'] - int8['int8'])
    assert int8['latency']['int8']['ms'] > 0 and int8['speedup'] > 0
    # mmdeploy's SDK runs the INT8 folder: the same top-1 class as ONNX
    # Runtime (its own, older ONNX Runtime rounds INT8 a little otherwise).
    assert int8['sdk_error'] < 0.1
    for name in ('end2end.onnx', 'deploy.json', 'pipeline.json',
                 'detail.json'):
        assert (out / 'int8' / name).is_file(), name
    assert json.loads((out / 'deploy_result.json').read_text())['int8'] \
        == json.loads(json.dumps(int8))
    assert 'INT8 drop' in (out / 'int8.md').read_text()
    assert not list(out.glob('.deploy-*'))
    # The file is a QDQ INT8 model: per-channel int8 conv weights, and only
    # the opsets the SDK's older ONNX Runtime accepts.
    model = onnx.load(out / 'int8' / 'end2end.onnx')
    ops = {n.op_type for n in model.graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear', 'Conv'} <= ops
    int8_weights = [t for t in model.graph.initializer
                    if t.data_type == onnx.TensorProto.INT8 and t.dims
                    and len(t.dims) == 4]
    assert len(int8_weights) == 7  # the 7 fused ODBBs
    scales = {t.name: t for t in model.graph.initializer}
    # The output layer (the classifier's fc) stays fp32: 8-bit logits tie.
    gemm = next(n for n in model.graph.node if n.op_type == 'Gemm')
    assert [scales[t].data_type for t in gemm.input[1:]] == [
        onnx.TensorProto.FLOAT] * 2
    per_channel = [n for n in model.graph.node
                   if n.op_type == 'DequantizeLinear'
                   and n.input[0] in {w.name for w in int8_weights}]
    assert all(len(scales[n.input[1]].dims) == 1
               and scales[n.input[1]].dims[0] > 1 for n in per_channel)
    assert [(o.domain, o.version) for o in model.opset_import] == [('', 17)]
    # The reported top-1, recomputed here: ONNX Runtime on every test
    # image, preprocessed by the model's own data preprocessor.
    from mmengine.config import Config
    from mmengine.runner import Runner

    from repnas_mm.deploy.model import build_model_unchecked
    cfg = Config.fromfile(result['config'])
    # As mmengine's Runner does: the config's top-level data preprocessor.
    cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    preprocessor = build_model_unchecked(cfg).data_preprocessor
    session = ort.InferenceSession(str(out / 'int8' / 'end2end.onnx'),
                                   providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    correct = total = 0
    for batch in Runner.build_dataloader(cfg.test_dataloader):
        with torch.no_grad():
            x = preprocessor(batch, False)['inputs'].numpy()
        scores = session.run(None, {name: x})[0]
        labels = np.array([int(s.gt_label) for s in batch['data_samples']])
        correct += int((scores.argmax(1) == labels).sum())
        total += len(labels)
    assert total == 200
    assert 100 * correct / total == pytest.approx(int8['int8'], abs=1e-4)
    # Deployed again without --int8 (or --onnx): the earlier INT8 and SDK
    # files do not stay beside the new fused model.
    deploy(str(searched_qf['config']), searched_qf['checkpoint'], str(out),
           VerifyOptions(num_images=1))
    assert sorted(p.name for p in out.iterdir()) == [
        'deploy_result.json', 'odbb_fmnist_qf_cls_deploy.py',
        'odbb_fmnist_qf_cls_fused.pth']


@pytest.mark.slow
def test_a_drop_above_the_tolerance_writes_nothing(searched_qf, tmp_path,
                                                   monkeypatch):
    from repnas_mm.deploy import int8
    out = tmp_path / 'deploy'
    out.mkdir()
    (out / 'earlier.txt').write_text('an earlier deployment')
    real = int8.evaluate

    def worse(task, cfg, backend, what, log=print):
        metrics, n = real(task, cfg, backend, what, log)
        if what == 'int8':  # as if INT8 lost 3 points
            metrics = dict(metrics, **{'accuracy/top1':
                                       metrics['accuracy/top1'] - 3.0})
        return metrics, n

    monkeypatch.setattr(int8, 'evaluate', worse)
    with pytest.raises(DeployError, match=r'points below fp32 .*'
                       r'--int8-tolerance 2\b.*nothing was written'):
        deploy(str(searched_qf['config']), searched_qf['checkpoint'],
               str(out), VerifyOptions(num_images=1),
               int8=Int8Options(tolerance=2.0, calib_images=8))
    # The folder is as it was: no fused checkpoint, SDK file or INT8 model.
    assert [p.name for p in out.iterdir()] == ['earlier.txt']
    # A new folder is not even created.
    with pytest.raises(DeployError, match='nothing was written'):
        deploy(str(searched_qf['config']), searched_qf['checkpoint'],
               str(tmp_path / 'new'), VerifyOptions(num_images=1),
               int8=Int8Options(tolerance=2.0, calib_images=8))
    assert not (tmp_path / 'new').exists()


@pytest.mark.slow
def test_int8_options_are_checked_before_any_work(searched_qf, tmp_path):
    proc = run_tool('tools/deploy.py', searched_qf['config'],
                    searched_qf['checkpoint'], '--work-dir', tmp_path / 'o',
                    '--int8', '--calib-images', '0', check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and err[-1].startswith('error: ')
    assert 'calib_images must be at least 1' in err[-1]
    assert not (tmp_path / 'o').exists()


@pytest.mark.slow
def test_deploy_tool_stops_when_the_real_int8_check_fails(searched_qf,
                                                          tmp_path):
    """tools/deploy.py end to end, nothing stubbed: the real export,
    quantization and both evaluations run, and the drop check fails (a
    tolerance of -100 asks INT8 to beat fp32 by 100 points, which no model
    can): exit 1, one line, the folder as it was."""
    out = tmp_path / 'deploy'
    out.mkdir()
    (out / 'earlier.txt').write_text('an earlier deployment')
    proc = run_tool('tools/deploy.py', searched_qf['config'],
                    searched_qf['checkpoint'], '--work-dir', out, '--int8',
                    '--calib-images', '8', '--num-images', '1',
                    '--int8-tolerance', '-100', check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert err[-1].startswith('error: INT8 top-1 '), err[-5:]
    assert sum(line.startswith(('error', 'Traceback')) for line in err) == 1
    assert '(--int8-tolerance -100); nothing was written' in err[-1]
    assert [p.name for p in out.iterdir()] == ['earlier.txt']


@pytest.mark.slow
def test_qat_fine_tune_deploys_with_its_trained_scales(searched_qf,
                                                       tmp_path):
    """tools/train.py with the shipped QAT config from the searched
    checkpoint, then tools/deploy.py --int8: the INT8 model holds exactly
    the scales the fine-tune trained (none calibrated), and the tolerance
    check still refuses."""
    import onnx

    from mmengine.config import Config

    from repnas_mm.deploy.model import build_model_unchecked
    from repnas_mm.deploy.quantize import read_scales
    from repnas_mm.rep.quant import act_quantizers, quantized_layers
    data = Config.fromfile(searched_qf['config']).data_root
    config = tmp_path / 'qat.py'
    config.write_text(f"""_base_ = '{REPO}/configs/demo/odbb_fmnist_qat_cls.py'
data_root = '{data}'
model = dict(backbone=dict(form='quant_friendly'))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
load_from = '{searched_qf["checkpoint"]}'
train_cfg = dict(max_epochs=1)
param_scheduler = dict(T_max=1, end=1)
""")
    proc = run_tool('tools/train.py', config, '--work-dir', tmp_path / 'qat')
    log = proc.stdout + proc.stderr
    assert 'QAT: 7 quantized layers, 8 activation ranges calibrated on 8 ' \
        'training batches' in log, log[-3000:]
    checkpoint = (tmp_path / 'qat' / 'last_checkpoint').read_text().strip()

    out = tmp_path / 'deploy'
    run_tool('tools/deploy.py', config, checkpoint, '--work-dir', out,
             '--int8', '--num-images', '1', '--int8-tolerance', '100')
    int8 = json.loads((out / 'deploy_result.json').read_text())['int8']
    assert int8['calibration']['method'] == 'trained (QAT)'
    assert int8['fp32'] >= 30 and int8['int8'] >= 30, int8
    assert 'quantization-aware training learned' in (out / 'int8.md').read_text()
    # The trained scales, read back from the ONNX file.
    model = build_model_unchecked(Config.fromfile(str(config)))
    state = torch.load(checkpoint, map_location='cpu',
                       weights_only=False)['state_dict']
    model.load_state_dict(state)
    trained = {q.scale_zero_point() for q in act_quantizers(model)}
    written = read_scales(str(out / 'int8' / 'end2end.onnx'))
    acts = {(float(s), int(z)) for s, z in written.values()
            if z.dtype == np.uint8}
    assert acts == trained and len(acts) == 8
    weights = [s for s, z in written.values() if z.dtype == np.int8]
    assert len(weights) == 7
    layers = [layer.quant.weight_scale(layer).numpy()
              for layer in quantized_layers(model).values()]
    for scale in weights:
        assert any(s.shape == scale.shape and np.array_equal(s, scale)
                   for s in layers)
    ops = {n.op_type for n in onnx.load(out / 'int8' / 'end2end.onnx')
           .graph.node}
    assert 'Relu' not in ops  # fused into the convs' quantized outputs

    # The tolerance check stands for a QAT model too: exit 1, one line,
    # nothing written.
    refused = tmp_path / 'refused'
    proc = run_tool('tools/deploy.py', config, checkpoint, '--work-dir',
                    refused, '--int8', '--num-images', '1',
                    '--int8-tolerance', '-100', check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and err[-1].startswith('error: INT8 top-1 ')
    assert not refused.exists()
