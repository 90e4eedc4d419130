"""Only the optional C accelerator is declared here; everything else is in pyproject.toml.

``optional=True``: where the extension cannot be compiled (no compiler, an unsupported
interpreter), the install still succeeds and scalekit runs its pure-Python paths.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("scalekit._speedups", sources=["src/scalekit/_speedups.c"], optional=True),
    ],
)
