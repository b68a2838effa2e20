"""The installed stack: compiled mmcv ops, OpenMMLab imports, collect_env."""
import importlib.util
import subprocess
import sys

import pytest
import torch

from .conftest import REPO, run_tool


def test_mmcv_nms_runs_on_cpu():
    from mmcv.ops import nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30],
                          [0, 0, 10, 9]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    # Box 3 (0.95) suppresses boxes 0 and 1; box 2 does not overlap.
    assert keep.tolist() == [3, 2]
    assert dets[:, 4].tolist() == pytest.approx([0.95, 0.7])


def test_mmcv_deform_conv_op_is_compiled():
    """CenterNet's neck uses DCNv2 (ModulatedDeformConv2d): a compiled op."""
    from mmcv.ops import ModulatedDeformConv2dPack
    torch.manual_seed(0)
    dcn = ModulatedDeformConv2dPack(4, 6, 3, padding=1).eval()
    x = torch.randn(1, 4, 8, 8)
    # Offsets start at zero and masks at sigmoid(0) = 0.5: a plain conv / 2.
    ref = torch.nn.functional.conv2d(x, dcn.weight, None, padding=1) * 0.5
    with torch.no_grad():
        out = dcn(x) - dcn.bias.reshape(1, -1, 1, 1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_openmmlab_model_packages_import():
    import mmdet.models  # noqa: F401
    import mmpretrain.models  # noqa: F401
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as CLS
    assert DET.get('CenterNet') is not None
    assert CLS.get('ImageClassifier') is not None


def test_openmmlab_base_configs_resolve():
    """mmengine finds `mmdet::`/`mmpretrain::` configs (needs pkg_resources)."""
    from mmengine.config import Config
    from mmengine.utils import is_installed
    assert is_installed('mmdet') and is_installed('mmpretrain')
    cfg = Config.fromfile(REPO / 'tests' / 'configs' / 'centernet_r18_coco8.py')
    assert cfg.model.type == 'CenterNet'


def test_repnas_mm_registers_in_both_registries():
    import repnas_mm  # noqa: F401
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as CLS
    from repnas_mm.models import ODBBNet
    assert CLS.get('ODBBNet') is ODBBNet
    assert DET.get('ODBBNet') is ODBBNet


def test_rep_core_imports_without_openmmlab():
    """repnas_mm.rep needs torch only: import it with mmengine hidden."""
    # None in sys.modules makes a package look absent to import and find_spec.
    code = ('import sys\n'
            'for name in ("mmengine", "mmcv", "mmdet", "mmpretrain"):\n'
            '    sys.modules[name] = None\n'
            'import repnas_mm.rep as rep\n'
            'import torch\n'
            'b = rep.ODBB(4, 4).eval()\n'
            'print(b(torch.randn(1, 4, 5, 5)).shape)\n')
    proc = subprocess.run([sys.executable, '-c', code],
                          cwd=REPO,
                          capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'torch.Size([1, 4, 5, 5])' in proc.stdout


def test_collect_env_check_passes():
    proc = run_tool('tools/collect_env.py', '--check')
    out = proc.stdout
    for name in ('PyTorch', 'MMEngine', 'MMCV', 'MMDetection', 'MMPretrain',
                 'ONNX Runtime', 'MMDeploy', 'MMDeploy SDK runtime',
                 'repnas_mm'):
        assert name in out
    # mmdeploy and its SDK runtime are installed by `make setup` (--no-deps).
    for line in out.splitlines():
        if line.startswith('MMDeploy'):
            assert line.split(':', 1)[1].strip() == '1.3.1', line
    ops_line = next(ln for ln in out.splitlines() if ln.startswith('MMCV ops'))
    assert 'compiled with' in ops_line


def _load_build_mmcv():
    spec = importlib.util.spec_from_file_location(
        'build_mmcv', REPO / 'scripts' / 'build_mmcv.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_mmcv_patches_every_std_flag(tmp_path):
    build = _load_build_mmcv()
    (tmp_path / 'setup.py').write_text(
        "a = ['-std=c++14']\nb = ['-std=c++17']\nc = '/std:c++17'\n")
    assert build.patch_setup_py(tmp_path) == 2
    text = (tmp_path / 'setup.py').read_text()
    assert '-std=c++14' not in text and '-std=c++17' not in text
    assert text.count('-std=c++20') == 2
    # A setup.py without the flags is not the sdist the script knows.
    with pytest.raises(RuntimeError, match='no -std'):
        build.patch_setup_py(tmp_path)


def _fake_sdist(folder):
    """A tiny ``mmcv-2.1.0.tar.gz`` that pip can read the metadata of."""
    import tarfile
    src = folder / 'src' / 'mmcv-2.1.0'
    src.mkdir(parents=True)
    (src / 'setup.py').write_text(
        "from setuptools import setup\nsetup(name='mmcv', version='2.1.0')\n")
    (src / 'PKG-INFO').write_text(
        'Metadata-Version: 2.1\nName: mmcv\nVersion: 2.1.0\n')
    links = folder / 'links'
    links.mkdir()
    with tarfile.open(links / 'mmcv-2.1.0.tar.gz', 'w:gz') as tar:
        tar.add(src, arcname='mmcv-2.1.0')
    return links / 'mmcv-2.1.0.tar.gz'


def test_build_mmcv_downloads_through_pip_and_checks_the_hash(
        tmp_path, monkeypatch):
    """The sdist comes from ``pip download``, so the user's pip settings
    (here: PIP_NO_INDEX + PIP_FIND_LINKS, a local mirror) decide where from;
    a file with another sha256 is refused and not kept."""
    build = _load_build_mmcv()
    fake = _fake_sdist(tmp_path)
    monkeypatch.setenv('PIP_NO_INDEX', '1')
    monkeypatch.setenv('PIP_FIND_LINKS', str(fake.parent))
    dest = tmp_path / 'sdist'
    dest.mkdir()
    overlay = tmp_path / 'overlay'  # the venv's own setuptools suffices here
    overlay.mkdir()
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        build.download_sdist(dest, overlay)
    assert list(dest.iterdir()) == []
    monkeypatch.setattr(build, 'SDIST_SHA256', build.sha256(fake))
    got = build.download_sdist(dest, overlay)
    assert got == dest / 'mmcv-2.1.0.tar.gz'
    assert got.read_bytes() == fake.read_bytes()
    assert list(dest.iterdir()) == [got]


def test_build_mmcv_cache_key_names_torch_and_flavour():
    build = _load_build_mmcv()
    variant, use_cuda = build.build_variant()
    assert variant.startswith(f'torch{torch.__version__.split("+")[0]}-')
    assert ('-cpu-' in variant) == (not use_cuda)


def test_pinned_numpy_and_opencv_have_what_openmmlab_uses():
    """scripts/check_api_usage.py: every np.X / cv2.X the stack uses exists.

    Allowed, with reasons: ``np.ndarry`` and ``np.type`` appear only in
    docstrings; ``np.boxes`` is a typo in mmdet's Flickr30k metric that never
    worked; ``np.float`` (gone since numpy 1.24) is used only by mmcv's
    PSENet pixel_group op and mmdet's YouTube-VIS evaluation.
    """
    proc = run_tool('scripts/check_api_usage.py', '--allow', 'numpy.ndarry',
                    'numpy.type', 'numpy.boxes', 'numpy.float', check=False)
    assert proc.returncode == 0, proc.stdout
    assert 'MISSING' not in proc.stdout
