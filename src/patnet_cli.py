"""The ``patnet`` console command's entry point.

It lives beside the ``patnet`` package, not in it, because importing ``patnet`` registers the models with timm
(importing torch and timm takes seconds); with ``DEFER_REGISTRATION`` set here first, ``patnet --help`` and
``patnet --version`` answer without them, and every command registers the models before it runs
(``patnet.cli.main``). ``python -m patnet.cli`` is the same command with the models registered up front.
"""
from typing import List, Optional

DEFER_REGISTRATION = True


def main(argv: Optional[List[str]] = None) -> int:
    from patnet.cli import main as run

    return run(argv)
