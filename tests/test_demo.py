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
    assert summary['kept branches vs budget'].startswith(
        '22 kept, budget 22 of 44 legal')
    assert 'mAP@50' in summary['detection bbox mAP (CocoMetric)']
    # The searched network beside the RepVGG preset trained like it.
    line = summary['searched vs RepVGG preset, same schedule']
    searched, repvgg = (float(v.rstrip('%')) for v in line.split()[:3:2])
    assert 0 < searched <= 100 and 0 < repvgg <= 100
    assert line.endswith('(22 vs 16 branches)')
    baseline = json.loads((work / 'baseline' / 'results.json').read_text())
    assert baseline['methods']['repvgg']['top1_mean'] == pytest.approx(
        repvgg, abs=0.05)
    fused_error = float(
        summary['fused vs training-time, max relative error'].split()[0])
    ort_error, sdk_error = (float(e.rstrip(',')) for e in summary[
        'mmdeploy export vs PyTorch (ONNX Runtime, SDK)'].split()[:2])
    assert fused_error <= 1e-4 and ort_error <= 1e-3 and sdk_error <= 1e-3
    # INT8: measured on the validation set, within the demo's tolerance.
    deployed = json.loads((work / 'deploy' / 'deploy_result.json')
                          .read_text())['int8']
    assert deployed['metric'] == 'coco/bbox_mAP'
    assert deployed['drop'] <= 5 and deployed['calibration']['images'] == 16
    int8_map, fp32_map = (float(v.rstrip(',')) for v in summary[
        'INT8 vs fp32 bbox mAP (ONNX Runtime)'].split()[:3:2])
    assert int8_map == pytest.approx(deployed['int8'] / 100, abs=5e-4)
    assert fp32_map == pytest.approx(deployed['fp32'] / 100, abs=5e-4)
    # The fused detector runs fewer ops than the 22-branch one: faster.
    assert float(summary['fused vs training-time speed'].split('x')[0]) > 1
    for name, path in summary['artifacts'].items():
        assert Path(path).exists(), name
    # The data sets are what the summary says they are.
    det = json.loads((tmp_path / 'det' / 'instances_val.json').read_text())
    assert len(det['images']) == 16 and len(det['categories']) == 10
    assert all(a['bbox'][2] > 5 and a['bbox'][3] > 5
               for a in det['annotations'])
    classes = sorted(p.name for p in (tmp_path / 'cls' / 'train').iterdir())
    assert len(classes) == 10
