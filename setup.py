from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version():
    namespace = {}
    exec((ROOT / 'repnas_mm' / 'version.py').read_text(), namespace)
    return namespace['__version__']


def read_requirements(name):
    lines = (ROOT / 'requirements' / name).read_text().splitlines()
    return [ln.split('#')[0].strip() for ln in lines
            if ln.split('#')[0].strip()]


setup(
    name='repnas_mm',
    version=read_version(),
    description='RepNAS search, training, fusion and deployment of '
    'structurally re-parameterized CNNs for OpenMMLab',
    long_description=(ROOT / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.11',
    packages=find_packages(include=['repnas_mm', 'repnas_mm.*']),
    # What the library and mim read besides code (repnas_mm/resources.py):
    # configs, tools and the CIFAR-10 subset under repnas_mm/.mim/, as
    # mmpretrain and mmdet ship theirs. In the checkout these are links to
    # configs/, repnas_mm/tools/ and datasets/; a wheel holds copies.
    package_data={'repnas_mm': [
        '.mim/configs/**/*.py', '.mim/tools/*.py', '.mim/tools/*.sh',
        '.mim/datasets/*', '.mim/model-index.yml']},
    # repnas_mm.rep needs torch only; the rest needs the OpenMMLab stack,
    # which scripts/setup_env.sh installs (mmcv is built from source there).
    install_requires=read_requirements('torch.txt'),
    extras_require={
        'mm': read_requirements('runtime.txt'),
        'tests': read_requirements('tests.txt'),
        'ray': read_requirements('ray.txt'),
    },
)
