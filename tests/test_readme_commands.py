"""Every command README.md shows a user still runs as written.

Which commands: every line of a fenced ```bash block (continuation lines joined, ``&&`` chains
split, comments dropped) is a command, and a form this file does not know fails the test, so a new
README command cannot go unchecked. Inline code spans are prose that names commands, often partial
(`python -m sweep.attack` without its required `--out`) or with placeholders (`--out s3://…`):
a span counts as a command when it starts with a tool below, and gets the names check only (the
module or script exists, every `--option` it names is in the tool's help).

How a fenced command is checked, cheaply (no training, no Ray, no network):

- ``python -m sweep.grid ...``: run for real with ``--dry-run`` (expands the grid, starts
  nothing); ``--plan`` is dropped from that run, since it measures for minutes, and the whole
  argv is parsed instead. ``--config FILE`` that does not exist is written from the README's
  sweep-config example, which is checked with it.
- ``python -m <other module>`` and ``python benchmarks/X.py``: the argv is parsed by the tool's own
  argparse parser, which is stopped once parsing succeeds (``sweep.attack``, ``analysis.report``
  and ``analysis.query`` have no dry run); scripts also answer ``--help``.
- ``python -m pytest`` / ``pytest``: the args with ``--collect-only -q`` on one cheap file
  (exit 0, or 5 when a marker selects nothing there).
- ``pip install``: every extra named is in pyproject.toml and every package pinned is a dependency.
- ``ray`` / ``mlflow``: the click command line is parsed (not run); repository files it names exist;
  ``ray job submit ... -- CMD`` checks CMD as a command of its own.
- ``kubectl``: the subcommand answers ``--help`` (when kubectl is installed) and ``-f`` files exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEACH = ("tests/test_readme_commands.py does not know how to check this README command; teach it "
         "(add a branch to `_plan`) or change the README")
INLINE_TOOLS = ("python -m ", "python benchmarks/", "pytest ", "pip install ", "mlflow ", "ray ",
                "kubectl ")
CHEAP_TEST_FILE = "tests/test_results.py"  # collection imports little


@dataclass(frozen=True)
class Command:
    text: str
    line: int
    fenced: bool  # a fenced bash line (full check) or an inline span (names check)

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def _fenced_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """(first line number, body) of each ```lang block."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 2, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    for start, body in _fenced_blocks(text, "bash"):
        logical, first = "", None
        for offset, raw in enumerate(body.split("\n")):
            first = start + offset if first is None else first
            if raw.rstrip().endswith("\\"):
                logical += raw.rstrip()[:-1] + " "
                continue
            logical += raw
            words = shlex.split(logical, comments=True)
            if words:
                chain: list[list[str]] = [[]]
                for word in words:
                    if word in ("&&", ";", "||"):
                        chain.append([])
                    else:
                        chain[-1].append(word)
                commands += [Command(shlex.join(c), first, True) for c in chain if c]
            logical, first = "", None
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for match in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)?)`", prose):
        span = " ".join(match.group(1).split())
        if span.startswith(INLINE_TOOLS):
            commands.append(Command(span, prose.count("\n", 0, match.start()) + 1, False))
    return commands


def sweep_config_example(text: str) -> str:
    """The README's sweep config example: the toml block with a [grid] section."""
    for _, body in _fenced_blocks(text, "toml"):
        if "[grid]" in body and body.lstrip().startswith("name ="):
            return body
    raise AssertionError("README.md has no ```toml sweep config example (name = ..., [grid])")


# ---- what to run for a command: jobs for one helper process, or checks done here

def _strip_time(words: list[str]) -> list[str]:
    return words[1:] if words and words[0] == "time" else words


def _plan(cmd: Command) -> list[dict]:
    """The checks of one command, as job dicts (kind: helper / pytest / local)."""
    words = _strip_time(shlex.split(cmd.text))
    tool = words[0] if words else ""
    if tool == "python" and words[1:3] == ["-m", "pytest"] or tool == "pytest":
        args = words[3:] if tool == "python" else words[1:]
        return [{"kind": "pytest", "args": args}]
    if tool == "python" and len(words) >= 3 and words[1] == "-m":
        module, argv = words[2], words[3:]
        if not cmd.fenced:
            return [{"kind": "helper", "job": {"mode": "help", "module": module, "argv": ["--help"],
                                                "names": _options(argv)}}]
        jobs = [{"kind": "helper", "job": {"mode": "parse", "module": module, "argv": argv}}]
        if module == "sweep.grid":
            dry = [a for a in argv if a != "--plan"]
            dry += [] if "--dry-run" in dry else ["--dry-run"]
            jobs.append({"kind": "helper", "job": {"mode": "run", "module": module, "argv": dry}})
        return jobs
    if tool == "python" and len(words) >= 2 and words[1].endswith(".py"):
        script = words[1]
        at = str(ROOT / script)  # the helper runs in an empty folder: the repository's copy
        jobs = [{"kind": "local", "check": "exists", "path": script},
                {"kind": "helper", "job": {"mode": "help", "script": at, "argv": ["--help"],
                                           "names": [] if cmd.fenced else _options(words[2:])}}]
        if cmd.fenced:
            jobs.append({"kind": "helper", "job": {"mode": "parse", "script": at, "argv": words[2:]}})
        return jobs
    if words[:2] == ["pip", "install"]:
        return [{"kind": "local", "check": "pip", "args": words[2:]}]
    if tool in ("ray", "mlflow"):
        argv = words[1:]
        inner = argv[argv.index("--") + 1:] if "--" in argv else []
        jobs = [{"kind": "helper", "job": {"mode": "click", "tool": tool, "argv": argv,
                                           "names_only": not cmd.fenced}},
                *[{"kind": "local", "check": "exists", "path": w} for w in argv if w.startswith("deploy/")]]
        if inner:
            jobs += _plan(Command(shlex.join(inner), cmd.line, cmd.fenced))
        return jobs
    if tool == "kubectl":
        files = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-f"]
        return [{"kind": "local", "check": "kubectl", "sub": words[1]},
                *[{"kind": "local", "check": "exists", "path": f} for f in files]]
    return [{"kind": "unknown"}]


def _options(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--") and len(a) > 2]


HELPER = r'''
import argparse, contextlib, io, json, os, runpy, sys, traceback

class Parsed(Exception):
    pass

original = argparse.ArgumentParser.parse_args

def stop_after_parse(self, args=None, namespace=None):
    original(self, args, namespace)
    raise Parsed()

def click_check(job):
    import click
    if job["tool"] == "ray":
        from ray.scripts.scripts import cli
    else:
        from mlflow.cli import cli
    cmd, argv, names = cli, list(job["argv"]), [job["tool"]]
    ctx = click.Context(cli, info_name=job["tool"])
    while isinstance(cmd, click.Group) and argv and not argv[0].startswith("-"):
        sub = cmd.get_command(ctx, argv[0])
        if sub is None:
            return 2, f"{' '.join(names)}: no subcommand {argv[0]!r}"
        names.append(argv.pop(0))
        cmd = sub
        ctx = click.Context(cmd, info_name=names[-1], parent=ctx)
    if job["names_only"]:
        known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        unknown = [a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] not in known]
        return (2, f"unknown options {unknown}") if unknown else (0, "")
    try:
        cmd.make_context(names[-1], argv, parent=ctx.parent)
    except click.exceptions.Exit as e:
        return e.exit_code, ""
    except click.ClickException as e:
        return 2, e.format_message()
    return 0, ""

def run(job):
    if job["mode"] == "click":
        return click_check(job)
    target = job.get("module") or job["script"]
    sys.argv = [target] + job["argv"]
    argparse.ArgumentParser.parse_args = stop_after_parse if job["mode"] == "parse" else original
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if job.get("module"):
                runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(job["script"])))
                runpy.run_path(job["script"], run_name="__main__")
        code = 0
    except Parsed:
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        code, _ = 1, out.write(traceback.format_exc())
    text = out.getvalue()
    if code == 0 and job["mode"] == "help":
        missing = [n for n in job.get("names", []) if n not in text]
        if missing:
            return 2, f"options not in {target} --help: {missing}"
    return code, text[-3000:]

jobs = json.load(sys.stdin)
results = {}
for key, job in jobs.items():
    os.chdir(os.environ["README_CHECK_DIR"])
    results[key] = run(job)
with open(os.environ["README_CHECK_RESULTS"], "w") as f:
    json.dump(results, f)
'''


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": ""}


def _key(job: dict) -> str:
    return json.dumps(job, sort_keys=True)


TEXT = README.read_text()
COMMANDS = readme_commands(TEXT)


@pytest.fixture(scope="module")
def helper_results(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Every helper job of every command, run in one Python process in an empty folder."""
    work = tmp_path_factory.mktemp("readme_commands")
    jobs = {}
    for cmd in COMMANDS:
        for job in _plan(cmd):
            if job["kind"] == "helper":
                jobs[_key(job["job"])] = job["job"]
                for i, word in enumerate(job["job"].get("argv", [])[:-1]):
                    if word == "--config" and job["job"]["mode"] == "run":
                        path = work / job["job"]["argv"][i + 1]
                        if not path.exists():
                            path.write_text(sweep_config_example(TEXT))
    results_file = work / "results.json"
    env = {**_env(), "README_CHECK_DIR": str(work), "README_CHECK_RESULTS": str(results_file)}
    proc = subprocess.run([sys.executable, "-c", HELPER], input=json.dumps(jobs), text=True,
                          capture_output=True, env=env, cwd=work, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {k: tuple(v) for k, v in json.loads(results_file.read_text()).items()}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _local(job: dict) -> None:
    if job["check"] == "exists":
        assert (ROOT / job["path"]).exists(), f"{job['path']} does not exist in the repository"
    elif job["check"] == "pip":
        project = _pyproject()["project"]
        extras = project.get("optional-dependencies", {})
        deps = {re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
        for arg in job["args"]:
            if arg == "-e":
                continue
            match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", arg)
            if match:
                named = (match.group(1) or "").split(",") if match.group(1) else []
                unknown = [e for e in named if e not in extras]
                assert not unknown, f"extras {unknown} are not in pyproject.toml ({sorted(extras)})"
                continue
            name = re.split(r"[\s<>=!~\[;]", arg, maxsplit=1)[0].lower()
            assert name in deps, f"pip install {arg}: {name} is not a dependency in pyproject.toml"
    elif job["check"] == "kubectl":
        if shutil.which("kubectl") is None:
            pytest.skip("kubectl is not installed here")
        proc = subprocess.run(["kubectl", job["sub"], "--help"], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, f"kubectl {job['sub']}: {proc.stderr[-500:]}"
    else:
        raise AssertionError(f"unknown local check {job}")


_PYTEST_CHECKED: dict[tuple[str, ...], str] = {}  # one collection per distinct argv


def _pytest(args: list[str]) -> None:
    if tuple(args) not in _PYTEST_CHECKED:
        _PYTEST_CHECKED[tuple(args)] = _pytest_collect(args)
    assert not _PYTEST_CHECKED[tuple(args)], _PYTEST_CHECKED[tuple(args)]


def _pytest_collect(args: list[str]) -> str:
    """'' when pytest parses the args and collects; else what went wrong."""
    expanded: list[str] = []
    for arg in args:
        if any(ch in arg for ch in "*?[") and not arg.startswith("-"):
            matches = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(arg))
            if not matches:
                return f"{arg} matches no file"
            expanded += matches
        else:
            expanded.append(arg)
    paths = [a for a in expanded if a.startswith("tests")]
    missing = [p for p in paths if not (ROOT / p.split("::")[0]).exists()]
    if missing:
        return f"{missing} do not exist"
    extra = [] if paths else [CHEAP_TEST_FILE]
    proc = subprocess.run([sys.executable, "-m", "pytest", *expanded, *extra, "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    if proc.returncode in (0, 5):
        return ""
    return f"pytest {shlex.join(args)}: {(proc.stdout + proc.stderr)[-3000:]}"


def test_readme_has_the_quick_start_commands():
    """The quick start is two commands: install and run the main job, and the tests."""
    fenced = [shlex.split(c.text) for c in COMMANDS if c.fenced]
    assert fenced[:3] == [["pip", "install", "torch==2.13.0", "-e", ".[test]"],
                          ["python", "-m", "sweep.grid"], ["python", "-m", "pytest"]]
    assert len([c for c in COMMANDS if not c.fenced]) > 0


def test_the_sweep_config_example_is_valid(tmp_path):
    from sweep.config import load_file

    path = tmp_path / "my_sweep.toml"
    path.write_text(sweep_config_example(TEXT))
    load_file(path)  # refuses an unknown field or a bad value, naming it


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.line}:{c.text[:60]}" for c in COMMANDS])
def test_readme_command_runs(cmd: Command, helper_results):
    for job in _plan(cmd):
        if job["kind"] == "unknown":
            pytest.fail(f"{cmd}\n{TEACH}")
        elif job["kind"] == "helper":
            code, output = helper_results[_key(job["job"])]
            assert code == 0, f"{cmd}\n{job['job']} exited {code}:\n{output}"
        elif job["kind"] == "pytest":
            _pytest(job["args"])
        else:
            _local(job)


def test_an_unknown_command_form_fails_with_a_request_to_teach_it():
    unknown = readme_commands("```bash\nmake everything  # a new tool\n```\n")
    assert [j["kind"] for j in _plan(unknown[0])] == ["unknown"]
    inline = readme_commands("run `python -m sweep.grid --dry-run` and `ray.put` (not a command)\n")
    assert [c.text for c in inline] == ["python -m sweep.grid --dry-run"]
