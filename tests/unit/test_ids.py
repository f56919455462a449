"""Combo ids must stay bit-exact with the original pipeline so old and new results join."""

from __future__ import annotations

import pytest

from shared.ids import combo_id, evaluation_task_id, generation_task_id, is_safe_id


@pytest.mark.parametrize(
    ("concepts", "level", "k_max", "expected"),
    [
        (
            ["dearth-ai-discoveries", "default-mode-network", "generator-verifier-gap", "economic-moat"],
            "paragraph",
            4,
            "combo_v1_13c725cf02fa",
        ),
        (
            [
                "dearth-ai-discoveries",
                "default-mode-network",
                "economic-innovation-models",
                "economic-moat",
                "generator-verifier-gap",
            ],
            "paragraph",
            5,
            "combo_v1_85128e4e5ef3",
        ),
    ],
)
def test_combo_id_matches_the_original_pipeline(concepts: list[str], level: str, k_max: int, expected: str) -> None:
    assert combo_id(concepts, level, k_max) == expected


def test_combo_id_ignores_member_order() -> None:
    assert combo_id(["b", "a", "c"], "paragraph", 3) == combo_id(["c", "b", "a"], "paragraph", 3)


def test_combo_id_depends_on_level_and_k_max() -> None:
    ids = {
        combo_id(["a", "b"], "paragraph", 2),
        combo_id(["a", "b"], "sentence", 2),
        combo_id(["a", "b"], "paragraph", 3),
    }
    assert len(ids) == 3


def test_generation_task_id_has_no_replicate_suffix_with_one_replicate() -> None:
    assert generation_task_id("combo_v1_x", "essay", "gemini") == "combo_v1_x_essay_gemini"


def test_generation_task_id_numbers_replicates_from_one() -> None:
    ids = [generation_task_id("combo_v1_x", "essay", "gemini", r, 3) for r in (1, 2, 3)]
    assert ids == ["combo_v1_x_essay_gemini_r1", "combo_v1_x_essay_gemini_r2", "combo_v1_x_essay_gemini_r3"]


def test_evaluation_task_id_extends_the_generation_task_id() -> None:
    assert evaluation_task_id("combo_v1_x_essay_gemini", "rubric", "gpt") == "combo_v1_x_essay_gemini_rubric_gpt"


@pytest.mark.parametrize("value", ["economic-moat", "gemini_25_flash", "A1"])
def test_safe_ids_are_accepted(value: str) -> None:
    assert is_safe_id(value)


@pytest.mark.parametrize("value", ["", "a/b", "..", "a.b", "a b", "a*", "a>", "ü"])
def test_ids_unsafe_in_file_names_or_subjects_are_refused(value: str) -> None:
    assert not is_safe_id(value)
