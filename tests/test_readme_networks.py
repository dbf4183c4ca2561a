"""The README's "Networks of modules" section: its examples run as written (with fewer pairs and epochs)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Networks of modules")
    return text[start:text.index("\n## ", start + 1)]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", _section(), flags=re.S)


def _run(code: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {})
    return printed.getvalue()


def test_the_siamese_example_has_at_most_15_lines_and_prints_the_accuracy_the_readme_gives():
    pytest.importorskip("sklearn")
    siamese = next(b for b in _python_blocks() if "ContrastiveLoss" in b)
    assert len(siamese.strip().splitlines()) <= 15
    with contextlib.redirect_stderr(io.StringIO()):                # the trainer's epoch lines
        accuracy = float(_run(siamese).split()[-1])
    assert f"in the learned 2-D space, {accuracy:.2f}," in _section()
    assert accuracy > 0.9


def test_the_picture_in_the_readme_is_what_the_example_builds():
    import fbprop as fb

    siamese = next(b for b in _python_blocks() if "ContrastiveLoss" in b)
    declaration = siamese[:siamese.index("machine = ")]
    scope: dict = {}
    exec(declaration.replace("from fbprop.siamese import embed, knn_accuracy, pair_dataset", ""), scope)
    picture = scope["net"].picture()
    assert picture in _section()
    assert scope["pool"].size == 33_218 and "33,218" in _section()
    assert isinstance(scope["net"], fb.Network)


def test_the_denoising_example_prints_what_the_readme_says():
    denoise = next(b for b in _python_blocks() if "minimize_energy" in b)
    printed = _run(denoise).strip()
    assert f"prints `{printed}`" in _section()
