"""churnlens: which customers will churn, when, what they are worth, and why.

One import package. Its sub-packages live in their own folders in the repository and are
mapped in on install (pyproject.toml): `churnlens.features` (features/), `churnlens.training`
(training/), `churnlens.serving` (serving/), and the command line `churnlens.cli` (cli/),
which imports them all. `churnlens.settings`, here, is imported by every stage and imports
none of them.
"""
