"""The `churnlens` command: the roof over the stages, one sub-command per stage.

Each sub-command lives with its group (`data`: sample-data, features; `model`: train,
report; `scoring`: score, serve; `project`: init) as a thin layer over library calls.
Arguments are parsed and checked before anything heavy is imported; settings are read after
parsing and passed down. Nothing below imports this package.
"""

from churnlens.cli.app import main

__all__ = ["main"]
