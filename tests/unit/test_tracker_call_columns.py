"""The call columns are declared once (`tables.CallUsage`): the result tables, `llm_calls` and the
CSVs take them from there, under `CallRecord`'s names, so a field added to the call reaches all."""

from __future__ import annotations

from services.tracker.csv_log import CSV_COLUMNS
from services.tracker.tables import CALL_USAGE_COLUMNS, EvaluationResult, GenerationResult, LlmCall, sa_table
from shared.events import CallRecord


def test_every_call_record_field_but_its_text_is_a_column_of_llm_calls() -> None:
    assert set(CallRecord.model_fields) - {"text"} <= set(sa_table(LlmCall).columns.keys())


def test_the_usage_columns_are_call_record_fields_carried_by_both_result_tables_and_csvs() -> None:
    assert set(CALL_USAGE_COLUMNS) <= set(CallRecord.model_fields)
    for table in (GenerationResult, EvaluationResult):
        assert set(CALL_USAGE_COLUMNS) <= set(sa_table(table).columns.keys())
    for columns in CSV_COLUMNS.values():
        assert set(CALL_USAGE_COLUMNS) <= set(columns)
