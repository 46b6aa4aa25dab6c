"""The crash tests use the process fixtures of tests/integration/conftest.py.

pytest gives a conftest's fixtures only to tests below its folder, so this
one loads that file under its own module name and re-exports its fixtures.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "tidepost_integration_fixtures"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        _NAME, Path(__file__).parent.parent / "integration" / "conftest.py")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module  # dataclasses look their module up while being made
    _spec.loader.exec_module(_module)
fixtures = sys.modules[_NAME]

processes = fixtures.processes
unbound = fixtures.unbound
smtp_sink = fixtures.smtp_sink
sink_port = fixtures.sink_port
tidepost_node = fixtures.tidepost_node
