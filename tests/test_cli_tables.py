"""CLI tables on a narrow terminal: an identifier is never cut (it must be copyable), the
other columns wrap without losing a character."""

from __future__ import annotations

import io

from rich.console import Console

from openmaas.cli.common import print_table

KEY_ID = "om1f2e3d4c5b6a7988"
ORG_ID = "org_6aa406b12caeaa5e"


def test_ids_stay_whole_on_an_80_column_terminal() -> None:
    out = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    headers = ("id", "org", "name", "role", "created (UTC)", "revoked (UTC)")
    rows = [(KEY_ID, ORG_ID, "a rather long key name for the nightly batch job", "member",
             "2026-12-03T17:55:31Z", "2026-12-04T09:00:00Z")]  # fmt: skip
    print_table(headers, rows, out)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert KEY_ID in text and ORG_ID in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text  # the other columns wrapped: nothing was cut short
