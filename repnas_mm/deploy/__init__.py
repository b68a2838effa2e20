"""Fuse, verify, export and time models (layer 3; ``tools/deploy.py``)."""
from .model import DeployError, build_model, is_fused, load_for_deploy
from .options import ExportOptions, Int8Options, VerifyOptions
from .workflow import deploy

__all__ = ['DeployError', 'ExportOptions', 'Int8Options', 'VerifyOptions',
           'build_model', 'deploy', 'is_fused', 'load_for_deploy']
