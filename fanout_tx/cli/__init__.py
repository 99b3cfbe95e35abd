"""Command-line tools shipped with the package: ``fanout-publish`` (``publish``). Standard
library plus ``config`` and ``grip`` only.
"""
