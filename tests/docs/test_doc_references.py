"""README.md and docs/*.md point at things that exist: repository paths they
name are in the checkout (or are what a command generates), and every `make
TARGET` they tell a reader to run is a target of the Makefile. A renamed file
or target fails here instead of leaving a dead reference.
The bad-input matrix's size stated in docs/reliability.md is the matrix's.
(tests/deploy/test_docs.py checks docs/deploy.md's code and command lines.)"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from reliability.bad_inputs.matrix import cases

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Top-level folders of the checkout: a word starting with one of them is a path.
TOP = ("pinrank", "client", "loadtest", "reliability", "tests", "docs", "deploy", "export", "testkit", ".ci",
       "model_repository")
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/(?:[\w.-]|/|\{[\w.,-]+\})*)")
#: What commands write (git-ignored): named in the docs, absent from a fresh clone.
GENERATED = ("model_repository/cpu", "model_repository/gpu", "model_repository/.build")
#: Words shaped like paths that are not files: a Kubernetes resource and an annotation key.
NOT_PATHS = {"deploy/pinrank-triton", "pinrank/proxy-config-sha256"}
MAKE = re.compile(r"`make ([a-z0-9][\w-]*)|^\s+make ([a-z0-9][\w-]*)", re.MULTILINE)


def expand(word: str) -> list[str]:
    """`results/real.{json,md}` -> both names."""
    parts = re.split(r"\{([^}]*)\}", word)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def path_references(text: str) -> set[str]:
    words = {m.rstrip(".") for m in PATH.findall(text)}
    return {p for w in words if "..." not in w and w not in NOT_PATHS for p in expand(w)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_repository_paths_exist(doc):
    missing = sorted(p for p in path_references(doc.read_text())
                     if not p.startswith(GENERATED) and not (ROOT / p).exists())
    assert missing == [], f"{doc.name} names paths that are not in the checkout"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_make_targets_the_docs_name_exist(doc):
    targets = set(re.findall(r"^([a-z0-9][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = {a or b for a, b in MAKE.findall(doc.read_text())}
    assert named - targets == set(), f"{doc.name} names make targets the Makefile does not have"


def test_the_bad_input_count_is_the_matrix_size():
    stated = re.search(r"\(`reliability.bad_inputs`, (\d+) cases\)", (ROOT / "docs" / "reliability.md").read_text())
    assert stated, "docs/reliability.md no longer states the matrix size"
    assert int(stated[1]) == len(cases())


def test_the_checks_can_fail():
    assert path_references("see `loadtest/nope.py` and pinrank/{cli,gone}.py.") == \
        {"loadtest/nope.py", "pinrank/cli.py", "pinrank/gone.py"}
    assert path_references("`client/.../_base.py`, deploy/pinrank-triton") == set()
    assert {a or b for a, b in MAKE.findall("run `make bench` or\n    make nope ARGS=1\nto make it")} == \
        {"bench", "nope"}
