"""The README's Usage example and docs/api.md say what the code does.

- The README's Usage example runs and prints the output the README shows under it (as
  tests/test_layers_docs.py checks docs/porting.md's worked example).
- Every signature written in docs/api.md equals ``inspect.signature`` of the object it
  names: names, order, kinds (keyword-only after ``*``) and default values, so a changed
  default or a renamed argument on either side fails here.  Signature blocks are the
  ```python blocks whose first line starts with ``fastnorm.`` or ``layer.``; every line
  in them that starts with one of those (at column 0) is a signature, continued over the
  following lines until its parentheses close.  ``fastnorm.a.b`` is looked up from the
  fastnorm package, ``layer.m`` on a fastnorm.LayerNorm instance.  Every other ```python
  block of the page is an example, and is run.
- Every public function and layer is documented with a signature, and
  fastnorm.reference has the same signatures as the functions, as the page says.
"""
import ast
import contextlib
import importlib
import inspect
import io
import pathlib
import re

import numpy as np
import pytest

import fastnorm
import fastnorm.reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
API_PAGE = ROOT / "docs" / "api.md"

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
SIGNATURE_START = re.compile(r"^(?:fastnorm|layer)\.[\w.]+\(", re.M)


# ---- the README's Usage example ------------------------------------------------------


def usage_example(text):
    """(code, shown output) of the README's Usage section: its first ```python block and
    the plain ``` block that follows it."""
    section = re.search(r"^## Usage\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Usage' section"
    blocks = FENCE.findall(section.group(1))
    languages = [lang.strip() for lang, _ in blocks]
    assert "python" in languages, "the Usage section has no ```python block"
    i = languages.index("python")
    assert i + 1 < len(blocks) and languages[i + 1] == "", \
        "the Usage example must be followed by a plain ``` block with its output"
    return blocks[i][1], blocks[i + 1][1]


def run_code(code):
    """What `code` prints, run with exec in a fresh namespace."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs_example__"})
    return printed.getvalue()


def compare_output(printed, shown):
    printed, expected = printed.splitlines(), shown.splitlines()
    assert len(printed) == len(expected), (printed, expected)
    for got, want in zip(printed, expected):
        if want.startswith("max |fastnorm - reference|:"):  # rounding differs by kernel family
            assert float(got.split(":")[1]) < 1e-6, got
        else:
            assert got == want


def test_readme_usage_example_prints_what_the_readme_shows():
    code, shown = usage_example(README.read_text())
    compare_output(run_code(code), shown)


def test_readme_links_the_api_page():
    text = README.read_text()
    assert "(docs/api.md)" in text and "(docs/porting.md)" in text


# ---- docs/api.md's signatures ----------------------------------------------------------


def python_blocks(text):
    return [code for lang, code in FENCE.findall(text) if lang.strip() == "python"]


def is_signature_block(code):
    return SIGNATURE_START.match(code) is not None


def signatures(text):
    """[(dotted name, parameter text)] of every signature line in the page's signature
    blocks, in order."""
    found = []
    for code in filter(is_signature_block, python_blocks(text)):
        for start in SIGNATURE_START.finditer(code):
            open_paren = start.end() - 1
            depth, end = 0, None
            for j in range(open_paren, len(code)):
                depth += {"(": 1, ")": -1}.get(code[j], 0)
                if depth == 0:
                    end = j
                    break
            assert end is not None, f"unclosed signature: {code[start.start():][:80]!r}"
            found.append((code[start.start():open_paren], code[open_paren + 1:end]))
    return found


def documented_signature(params):
    """inspect.Signature of a documented parameter list, its defaults evaluated with
    `numpy` in scope (e.g. dtype=numpy.float32)."""
    source = f"def _documented({params}):\n    pass\n"
    try:
        ast.parse(source)
    except SyntaxError as error:
        raise AssertionError(f"not a valid parameter list: ({params})") from error
    namespace = {"numpy": np, "np": np}
    exec(source, namespace)
    return inspect.signature(namespace["_documented"])


def resolve(dotted):
    """The object a documented name refers to."""
    head, _, rest = dotted.partition(".")
    if head == "layer":
        obj = fastnorm.LayerNorm(4)
        parts = rest.split(".")
    else:
        parts = rest.split(".")
        obj = fastnorm
        if parts[0] == "dask":
            pytest.importorskip("dask.array")
            obj = importlib.import_module("fastnorm.dask")
            parts = parts[1:]
    for part in parts:
        obj = getattr(obj, part)
    return obj


def describe(signature):
    """The comparable content of a signature: (name, kind, default) per parameter."""
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def check_signatures(text):
    """Every documented signature against the code; returns the documented names."""
    documented = signatures(text)
    assert documented, "no signature lines found"
    for name, params in documented:
        want = describe(documented_signature(params))
        got = describe(inspect.signature(resolve(name)))
        assert got == want, (f"{name}: docs/api.md says ({params}), "
                             f"the code has {inspect.signature(resolve(name))}")
    return {name for name, _ in documented}


def test_api_signatures_match_the_code():
    check_signatures(API_PAGE.read_text())


def test_api_page_documents_every_public_name():
    names = check_signatures(API_PAGE.read_text())
    missing = [n for n in fastnorm.__all__ if f"fastnorm.{n}" not in names]
    assert not missing, f"docs/api.md has no signature for {missing}"
    dask = {"fastnorm.dask.layer_norm", "fastnorm.dask.rms_norm", "fastnorm.dask.batch_norm"}
    assert dask <= names


@pytest.mark.parametrize("name", fastnorm.reference.__all__)
def test_reference_has_the_functions_signatures(name):
    # docs/api.md: "with the same signatures, defaults and semantics"
    assert inspect.signature(getattr(fastnorm.reference, name)) == \
        inspect.signature(getattr(fastnorm, name))


# ---- docs/api.md's examples ------------------------------------------------------------


EXAMPLES = [code for code in python_blocks(API_PAGE.read_text()) if not is_signature_block(code)]


def shown_in_comments(code):
    """What the page says each print() of an example shows: the comment after the call, or
    the comment line under it."""
    lines = code.splitlines()
    shown = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("print("):
            continue
        comment = line.partition("  # ")[2]
        if not comment and i + 1 < len(lines) and lines[i + 1].startswith("# "):
            comment = lines[i + 1][2:]
        assert comment, f"docs/api.md shows no output for: {line.strip()}"
        shown.append(comment.strip())
    return shown


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_api_examples_print_what_the_page_shows(code):
    if "fastnorm.dask" in code:
        pytest.importorskip("dask.array")
    assert run_code(code).splitlines() == shown_in_comments(code)


# ---- the checks above fail when the docs drift ------------------------------------------


def test_a_drifted_signature_fails():
    text = API_PAGE.read_text()
    drifted = text.replace("fastnorm.group_norm(x, num_groups, weight=None, bias=None, eps=1e-5)",
                           "fastnorm.group_norm(x, num_groups, weight=None, bias=None, eps=1e-6)")
    assert drifted != text
    with pytest.raises(AssertionError, match="group_norm"):
        check_signatures(drifted)


def test_a_drifted_output_fails():
    code, shown = usage_example(README.read_text())
    with pytest.raises(AssertionError):
        compare_output(run_code(code), shown.replace("mean 0.500", "mean 0.501"))
    example = next(code for code in EXAMPLES if "# [2.5 8.5]" in code)
    assert run_code(example).splitlines() == shown_in_comments(example)
    drifted = example.replace("# [2.5 8.5]", "# [2.5 8.6]")
    assert run_code(drifted).splitlines() != shown_in_comments(drifted)
