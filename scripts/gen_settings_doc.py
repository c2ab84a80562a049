"""Write docs/SETTINGS.md from the Settings class, so the list of settings cannot drift.

  python scripts/gen_settings_doc.py          # rewrite docs/SETTINGS.md
  python scripts/gen_settings_doc.py --check  # exit 1 if it is out of date (CI runs the test)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.config import Settings, default_in_words  # noqa: E402

DOC = ROOT / "docs" / "SETTINGS.md"
HEADER = """# Settings

Every setting is a flag of `python -m app serve`, an environment variable
`MLX_SERVER_<NAME>`, and a key of an optional YAML file (`--config FILE` or
`MLX_SERVER_CONFIG`). Flags win over environment variables over the file; a key the file
misspells is an error that names the closest setting. Boolean flags also have a `--no-…`
form. This page is generated from `app/config.py` by `scripts/gen_settings_doc.py`.

| flag | environment variable | default | meaning |
| --- | --- | --- | --- |
"""


def _default(name: str) -> str:
    if name == "cache_dir":
        return "see meaning"
    value, words = default_in_words(name)
    if words is not None:
        return words
    return str(value) if Settings.model_fields[name].default_factory else f"`{value}`"


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        meaning = (field.description or name.replace("_", " ")).replace("%%", "%")
        if name == "cache_dir":
            meaning += " (`$XDG_CACHE_HOME/mlx-openai-server-lab`, else `~/.cache/…`)"
        rows.append(f"| `--{name.replace('_', '-')}` | `MLX_SERVER_{name.upper()}` | "
                    f"{_default(name)} | {meaning} |")
    return HEADER + "\n".join(rows) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/gen_settings_doc.py")
            return 1
        return 0
    DOC.write_text(text)
    print(DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
