"""Docs that are derived from code stay in step with it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from app.lifecycle.registry import ModelLimits, ModelSpec

ROOT = Path(__file__).resolve().parents[2]


def test_settings_doc_is_generated_from_the_settings_class():
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts/gen_settings_doc.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs/SETTINGS.md").read_text() == gen.render(), (
        "docs/SETTINGS.md is out of date: run python scripts/gen_settings_doc.py")


def test_models_doc_lists_every_key_of_a_model_entry():
    table = (ROOT / "docs/MODELS.md").read_text()
    keys = [k for k in ModelSpec.model_fields if k != "limits"]
    keys += [f"limits.{k}" for k in ModelLimits.model_fields]
    missing = [k for k in keys if f"| `{k}` |" not in table]
    assert not missing, f"docs/MODELS.md lacks {missing}"
