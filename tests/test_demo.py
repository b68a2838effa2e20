"""The demo pipeline (tools/demo.py) end to end, at a much smaller size."""
import json
from pathlib import Path

import pytest

from .conftest import run_tool

FMNIST = Path('/usr/share/datasets/fashion-mnist')


@pytest.mark.slow
def test_demo_pipeline_quick(tmp_path):
    assert (FMNIST / 'train-images-idx3-ubyte.gz').is_file(), (
        'Debian package dataset-fashion-mnist is not installed (`make test` '
        'installs it as root; or: apt-get install dataset-fashion-mnist)')
    work = tmp_path / 'demo'
    proc = run_tool('tools/demo.py', '--quick', '--work-dir', work,
                    '--data-root', tmp_path / 'cls', '--det-data-root',
                    tmp_path / 'det', timeout=1200)
    assert '==== summary ====' in proc.stdout
    summary = json.loads((work / 'summary.json').read_text())
    numbers = summary['numbers']
    assert summary['kept branches vs budget'].startswith(
        '22 kept, budget 22 of 44 legal')
    # Every number the summary states is the one its step wrote.
    tested = json.loads(next((work / 'classifier_test').glob('*/*.json'))
                        .read_text())
    assert numbers['test_top1'] == tested['accuracy/top1']
    val = [json.loads(line) for line in next(
        (work / 'classifier').glob('*/vis_data/scalars.json')).open()]
    assert numbers['val_top1'] == [r['accuracy/top1'] for r in val
                                   if 'accuracy/top1' in r][-1]
    baseline = json.loads((work / 'baseline' / 'results.json').read_text())
    assert numbers['repvgg_test_top1'] == \
        baseline['methods']['repvgg']['top1_mean']
    arch = json.loads((work / 'classifier' / 'searched_arch.json')
                      .read_text())
    assert numbers['branches'] == arch['num_branches'] == 22
    # The searched-vs-RepVGG line says it is one seed and quotes both.
    line = summary['searched vs RepVGG preset, same schedule, 1 seed']
    assert line.startswith(f'{numbers["test_top1"]:.1f}% vs '
                           f'{numbers["repvgg_test_top1"]:.1f}% test top-1 '
                           '(22 vs 16 branches; over 3 seeds: '
                           'docs/results/default_demo)')
    fused_error = float(
        summary['fused vs training-time, max relative error'].split()[0])
    ort_error, sdk_error = (float(e.rstrip(',')) for e in summary[
        'mmdeploy export vs PyTorch (ONNX Runtime, SDK)'].split()[:2])
    assert fused_error <= 1e-4 and ort_error <= 1e-3 and sdk_error <= 1e-3
    # INT8 and fp32 measured on the detection test split (16 images).
    deployed = json.loads((work / 'deploy' / 'deploy_result.json')
                          .read_text())['int8']
    assert deployed['metric'] == 'coco/bbox_mAP'
    assert deployed['test_images'] == 16
    assert deployed['calibration']['images'] == 16
    assert deployed['drop'] == pytest.approx(deployed['fp32'] -
                                             deployed['int8'])
    # Then the quantization-aware fine-tune, shipped with its own scales.
    qat = json.loads((work / 'deploy_qat' / 'deploy_result.json')
                     .read_text())['int8']
    assert qat['calibration']['method'] == 'trained (QAT)'
    assert qat['test_images'] == 16
    assert numbers['int8_ptq_test_map'] == deployed['int8'] / 100
    assert numbers['int8_test_map'] == qat['int8'] / 100
    assert numbers['det_test_map'] == deployed['fp32'] / 100
    assert numbers['int8_speedup'] == qat['speedup']
    line = summary['INT8 (QAT) vs fp32 bbox mAP (ONNX Runtime)']
    int8_map, fp32_map = (float(v.rstrip(',')) for v in line.split()[:3:2])
    assert int8_map == pytest.approx(qat['int8'] / 100, abs=5e-4)
    assert fp32_map == pytest.approx(deployed['fp32'] / 100, abs=5e-4)
    assert f'post-training INT8: {deployed["int8"] / 100:.3f}' in line
    # The fused detector runs fewer ops than the 22-branch one: faster,
    # by the ratio of the latency table's own numbers.
    latency = json.loads((work / 'latency' / 'latency.json').read_text())
    training = next(v for k, v in latency['results'].items()
                    if 'training-time' in k)
    assert numbers['fused_speedup'] == pytest.approx(
        training['ms_per_batch'] / latency['results']['fused']
        ['ms_per_batch'])
    assert numbers['fused_speedup'] > 1
    for name, path in summary['artifacts'].items():
        assert Path(path).exists(), name
    # The data sets are what the summary says they are, and the test
    # splits are held out: no test image is a val image.
    det = json.loads((tmp_path / 'det' / 'instances_val.json').read_text())
    assert len(det['images']) == 16 and len(det['categories']) == 10
    assert all(a['bbox'][2] > 5 and a['bbox'][3] > 5
               for a in det['annotations'])
    det_test = json.loads((tmp_path / 'det' / 'instances_test.json')
                          .read_text())
    assert len(det_test['images']) == 16
    classes = sorted(p.name for p in (tmp_path / 'cls' / 'train').iterdir())
    assert len(classes) == 10
    names = {split: {p.name for p in (tmp_path / 'cls' / split).rglob('*.png')}
             for split in ('val', 'test')}
    assert len(names['val']) == 100 and len(names['test']) == 100
    assert not names['val'] & names['test']
