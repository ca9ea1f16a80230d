"""A run's golden captions as MLflow tables, at any run length (the layout is data/golden.py's): each
save logs the latest table under its fixed name and adds its rows to the current history table, which
holds GOLDEN_HISTORY_SAVES saves before the next one starts."""
from __future__ import annotations

from pathlib import Path

from vlmtrack.data.golden import GOLDEN_HISTORY_SAVES, history_golden_table, latest_golden_table

IMAGE_COLUMN = "image_relpath"


class GoldenTables:
    """One per run (a sweep: one per trial). It holds the current history table's rows: at most
    GOLDEN_HISTORY_SAVES x the golden set's size."""

    def __init__(self, saves_per_table: int = GOLDEN_HISTORY_SAVES):
        self.saves_per_table = saves_per_table
        self.first_step: int | None = None
        self.rows: list[dict] = []
        self.saves = 0

    def log(self, tracker, records: list[dict], step: int, image_root: Path) -> None:
        rows = [{"step": step, **r} for r in records]
        if self.first_step is None or self.saves == self.saves_per_table:
            self.first_step, self.rows, self.saves = step, [], 0
        self.rows += rows
        self.saves += 1
        tracker.log_table(rows, latest_golden_table(len(records)), image_root=image_root, image_column=IMAGE_COLUMN)
        tracker.log_table(list(self.rows), history_golden_table(self.first_step, len(records)),
                          image_root=image_root, image_column=IMAGE_COLUMN)
