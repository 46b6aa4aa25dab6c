"""docs/REPLIES.md against the code, both ways, so that neither drifts.

Each row of the tables names a reply constant (`replies.X`, `turn.X`,
`auth.X`), a function building one (`turn.s458_unable()`), `submit` (a
`SubmissionRejected` raised in src/tidepost/submission/) or `—` (a reply
with no constant: EHLO's lines, AUTH's 334); the test checks the code and
enhanced status of each, and that every constant, reply function and
SubmissionRejected of the code has a row.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from replies_table import table_rows

from tidepost.smtp_server import auth, replies, turn
from tidepost.smtp_server.replies import Reply

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"replies": replies, "turn": turn, "auth": auth}
RAISED = re.compile(r'SubmissionRejected\(\s*(\d{3}),\s*"([\d.]+)"')
PASS_THROUGH = {"replies.rejected"}  # sends the `submit` rows as they are


def build(function) -> Reply:
    """Call a reply function with placeholder arguments."""
    hints = {"int": 1, "str": "x"}
    args = [hints[str(p.annotation)] for p in inspect.signature(function).parameters.values()]
    return function(*args)


def resolve(name: str) -> Reply:
    """The Reply a `module.NAME` or `module.function()` cell stands for."""
    module, _, attribute = name.partition(".")
    value = getattr(MODULES[module], attribute.removesuffix("()"))
    return build(value) if attribute.endswith("()") else value


def code_constants() -> set[str]:
    """`module.NAME` / `module.function()` of every reply the three modules define."""
    names = set()
    for label, module in MODULES.items():
        for name, value in vars(module).items():
            if isinstance(value, Reply) and re.fullmatch(r"S\d{3}_\w+", name):
                names.add(f"{label}.{name}")
            elif (inspect.isfunction(value) and value.__module__ == module.__name__
                  and not name.startswith("_")
                  and inspect.signature(value).return_annotation == "Reply"):
                names.add(f"{label}.{name}()")
    return names


def submission_refusals() -> set[tuple[int, str]]:
    """(code, status) of every SubmissionRejected raised in the submission package."""
    found = set()
    for path in (ROOT / "src" / "tidepost" / "submission").glob("*.py"):
        found |= {(int(code), status) for code, status in RAISED.findall(path.read_text())}
    return found


ROWS = table_rows()


def test_the_table_was_found():
    assert len(ROWS) > 60


@pytest.mark.parametrize("row", [r for r in ROWS if r["reply"] not in ("—", "submit")],
                         ids=lambda r: f"{r['reply']}-{r['command']}")
def test_row_matches_its_constant(row):
    reply = resolve(row["reply"])
    assert (reply.code, reply.status) == (int(row["code"]), row["status"])
    assert row["command"], "say which command it answers"


def test_submission_rows_match_what_the_submission_raises():
    rows = {(int(r["code"]), r["status"]) for r in ROWS if r["reply"] == "submit"}
    assert rows == submission_refusals()


def test_every_constant_has_a_row():
    in_table = {r["reply"] for r in ROWS}
    missing = code_constants() - in_table - {f"{name}()" for name in PASS_THROUGH}
    assert not missing, f"add these to docs/REPLIES.md: {sorted(missing)}"
    unknown = {name for name in in_table if "." in name} - code_constants()
    assert not unknown, f"docs/REPLIES.md names replies the code lacks: {sorted(unknown)}"


def test_refusals_and_other_replies_are_apart():
    for row in ROWS:
        assert (int(row["code"]) >= 400) == (row["section"] == "Refusals"), row
