"""Compare architectures under one training recipe.

``tools/compare_architectures.py`` is its command line.

For one RepNAS search config, every method trains with the config's
schedule, data and seed, through ``tools/train.py`` (a subprocess,
``python -m repnas_mm.tools.train``, its log beside its checkpoints):

- ``repnas``: the config itself, the one-stage search (search, fix at
  ``fix_epoch``, train on);
- ``searched``: the architecture that ``repnas`` run (same seed) found,
  trained from scratch without the search (what the search found, apart
  from how the one-stage run trained it);
- ``random``: a random architecture with the search's branch budget (one
  seeded draw per seed), trained without the search;
- ``plain``, ``repvgg``, ``acb``, ``dbb``, ``full``: the presets;
- ``repnas-<name>``: a variant of the search (an ablation): the config
  changed by the named config options of a variants file.

When the search retrains what it found (``RepNASHook(at_fix='retrain')``),
the methods that train one fixed architecture (``searched``, ``random``,
the presets) train with the search's second stage: the epochs from
``fix_epoch`` on and their schedulers, so every method's network gets the
same schedule.

Each trained network is fused and verified (``tools/deploy.py``'s
``deploy``) and the fused network is evaluated with ``tools/test.py`` on the
config's test set. The grid runs seed by seed (every method of the first
seed, then the next), so an interrupted comparison covers whole seeds.
A finished run leaves ``result.json`` in its folder and
is reused when the comparison is run again; an interrupted training run
resumes from its last checkpoint. The table (JSON, markdown, figure) is
rebuilt from the runs' own result files every time.

The runs execute one after another here, or as Ray tasks on this machine
or a cluster (``--engine ray``), with the same results: :mod:`.engines`.

One job per module: :mod:`.methods` (each method's config), :mod:`.running`
(the runs and the grid), :mod:`.engines` (where the runs execute),
:mod:`.report` (the tables and the figure);
:mod:`.widths` is the width study (issue 32) on the same runs.
"""
from .methods import (METHODS, PRESET_METHODS, CompareError, legal_branches,
                      method_changes, method_config, read_variants,
                      second_stage)
from .engines import (ENGINES, GridEngine, add_engine_args,
                      engine_from_args)
from .report import summarize, write_tables
from .running import (compare, execute_run, method_maker, prepare_run,
                      run_grid)

__all__ = ['CompareError', 'ENGINES', 'GridEngine', 'METHODS',
           'PRESET_METHODS', 'add_engine_args', 'compare', 'engine_from_args',
           'execute_run', 'legal_branches', 'method_changes', 'method_config',
           'method_maker', 'prepare_run', 'read_variants', 'run_grid',
           'second_stage', 'summarize', 'write_tables']
