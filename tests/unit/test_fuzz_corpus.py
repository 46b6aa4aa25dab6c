"""Replay tests/corpus/: inputs that once crashed a parser, or reach far into one.

Each file in tests/corpus/TARGET/ runs through that fuzz target
(tests/fuzz_targets.py) and must pass its oracle.  bench/fuzz.py starts from
these files too; add a file here for every crash it finds, once fixed.
"""

from __future__ import annotations

import pytest
from fuzz_targets import CORPUS, TARGETS, corpus_files

FILES = corpus_files()


@pytest.mark.parametrize("target,path", FILES, ids=[f"{t}/{p.name}" for t, p in FILES])
def test_corpus_input_passes_its_target(target, path):
    TARGETS[target](path.read_bytes())


def test_every_target_has_a_corpus():
    assert {t for t, _ in FILES} == set(TARGETS)
    assert {p.name for p in CORPUS.iterdir() if p.is_dir()} == set(TARGETS)
