"""The README's examples, so they cannot go stale.

Every ```python block that imports fuser runs, in a folder holding `det.onnx` (the PaddleOCR
detector the README names), on small shapes: 224x224 inputs become 64x64 and 640x640 become
320x320 (the only edits). Every `fuser ...` line of a ```sh block is parsed by the real
command line (commands, options, choices and types must exist as written); the default run
executes the quick ones on the detector, FUSER_HEAVY=1 all of them in order in one folder (the
tuning and CUDA lines excepted, each for its stated reason), zoo models at 64x64.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from util import HEAVY, ROOT, paddle_model

from fuser.cli import main

README = ROOT / "README.md"
SMALL = {"224, 224": "64, 64", "640, 640": "320, 320", "1,3,640,640": "1,3,320,320"}
# lines never run here, by a phrase they hold, and why (the parse check still covers them)
NOT_RUN = {
    "--tune-trials 2000": "an hour of MetaSchedule tuning",
    "--target cuda": "needs nvcc",
}
QUICK = ("fuser info det.onnx", "fuser optimize det.onnx")  # run in the default run too


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def cli_lines() -> list[str]:
    """`fuser ...` lines of the sh blocks, comments and redirections removed."""
    lines = []
    for block in code_blocks("sh"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.split(r"\s[|>]\s", line)[0]  # the command, not the shell's redirection
            if line.startswith("fuser "):
                lines.append(line)
    return lines


def shrink(text: str) -> str:
    for big, small in SMALL.items():
        text = text.replace(big, small)
    return text


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A working folder with det.onnx, as the README assumes."""
    shutil.copy(paddle_model("ch_PP-OCRv4_det_infer.onnx"), tmp_path / "det.onnx")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_the_examples_this_test_reads():
    lines = cli_lines()
    assert len(lines) >= 20 and any(line.startswith("fuser report ") for line in lines)
    assert [b for b in code_blocks("python") if "import fuser" in b or "import torch, fuser" in b]
    for phrase in NOT_RUN:  # a stale exception would hide nothing: the phrase must still be there
        assert any(phrase in line for line in lines), phrase


def parse(args: list[str]) -> click.Context:
    """Parse a command line the way `fuser` does, without running it."""
    cmd, name, ctx = main, "fuser", None
    while True:
        ctx = cmd.make_context(name, list(args), parent=ctx)
        if not isinstance(cmd, click.Group):
            return ctx
        name, cmd, args = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])


@pytest.mark.parametrize("line", cli_lines(), ids=lambda line: " ".join(line.split()[:3]))
def test_cli_line_parses(line):
    """Each README command line names a real command with real options and valid values
    (a click UsageError otherwise)."""
    ctx = parse(shlex.split(line)[1:])
    assert not isinstance(ctx.command, click.Group) and not ctx.args


def test_python_snippet_runs(folder):
    (snippet,) = [b for b in code_blocks("python") if "import torch, fuser" in b]
    code = shrink(snippet)
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (folder / "r18.onnx").stat().st_size > 1_000_000 and "fold_conv_bn" in run.stdout
    page = (folder / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "fuser report" in page


def runnable(line: str) -> bool:
    return not any(phrase in line for phrase in NOT_RUN)


def invoke_line(line: str) -> None:
    args = shlex.split(shrink(line))[1:]
    zoo = [a for a in args if a.startswith("zoo:")] or (args[:2] == ["zoo", "export"] and args[2:3])
    if zoo and "--input-shape" not in args:
        args += ["--input-shape", "1,3,64,64"]
    if "--budget" in args:  # search budgets as written would take minutes per line here
        args[args.index("--budget") + 1] = "100"
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, f"{line}\n{r.output}"


def test_quick_cli_lines_run(folder):
    lines = [line for line in cli_lines() if line.startswith(QUICK)]
    assert len(lines) >= 2
    for line in lines:
        invoke_line(line)
    assert (folder / "det.opt.onnx").is_file()


@pytest.mark.heavy
@pytest.mark.skipif(not HEAVY, reason="FUSER_HEAVY=1: every README command line, run in order")
def test_every_cli_line_runs(folder):
    import numpy as np

    np.save(folder / "x.npy", np.random.default_rng(0).random((1, 3, 64, 64)).astype("float32"))
    for line in filter(runnable, cli_lines()):
        if line.startswith("fuser run ") and not (folder / line.split()[2]).exists():
            continue  # the build it runs is a tuning line's (not run here)
        invoke_line(line)
