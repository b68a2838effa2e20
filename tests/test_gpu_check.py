"""tools/gpu_check.py (`make gpu-check`): ready for whoever has a GPU.

No GPU here: without one it stops in one line, and --quick --device cpu runs
every step (latency, search steps, CenterNet with DCNv2 forward and backward)
at tiny sizes, which checks the script itself and its report.
"""
import json

import pytest

from .conftest import run_tool


def test_without_a_gpu_it_stops_in_one_line(tmp_path):
    proc = run_tool('tools/gpu_check.py', '--out-dir', tmp_path / 'out',
                    env={'CUDA_VISIBLE_DEVICES': ''},  # also on a GPU machine
                    check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'error: gpu_check measures a GPU, and no CUDA device is visible')
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_quick_on_the_cpu_runs_every_step_and_writes_the_report(tmp_path):
    out = tmp_path / 'gpu'
    run_tool('tools/gpu_check.py', '--quick', '--device', 'cpu',
             '--skip-tests', '--out-dir', out)
    data = json.loads((out / 'gpu_check.json').read_text())
    models = {r['model'] for r in data['latency']}
    assert {'fused', 'stock RepVGG-A0 deploy', 'ResNet-18',
            'ResNet-50'} <= models
    assert {(r['dtype'], r['batch']) for r in data['latency']} == {
        ('float32', 1), ('float32', 2)}
    assert set(data['search']) == {'plain', 'search', 'search online'}
    assert data['search']['search']['branches'] == 66
    assert all(r['steps_per_second'] > 0 for r in data['search'].values())
    det = data['centernet_dcn']
    assert det['dcn_layers'] == 3 and det['ms_per_step'] > 0
    report = (out / 'gpu_check.md').read_text()
    assert report.startswith('# GPU check: CPU') and '## Latency' in report
