"""The mark for tests of the compiled accelerator (``test_accel.py`` fails CI if it is absent)."""

from __future__ import annotations

import pytest

from scalekit._accel import speedups

needs_speedups = pytest.mark.skipif(speedups is None, reason="the C accelerator is not built")
