"""The command-line tools (``tools/`` of a checkout links here).

Each runs as ``python tools/<name>.py`` in a checkout, as
``python -m repnas_mm.tools.<name>`` anywhere the package is installed, and
through OpenMMLab's ``mim`` (``mim train repnas_mm CONFIG``, ``mim run
repnas_mm <name> ...``), which finds them in ``repnas_mm/.mim/tools``.
"""
