"""The repository's documentation stands alone (issue 13): README.md and docs/*.md link and refer only
to files inside the repository, never to design notes a reader of a clone does not have. Every command
in the README's shell blocks runs as written after the quick start: ``ocap``, ``ocapctl``, ``ocapd`` and
``ocap-python -m ocap_service`` lines parse with the real parsers (their commands, flags and choices
exist), and no line runs ocap's modules or the tests with a bare ``python``, the system's, not the
environment's with ocap's dependencies (``ocap-python``). Lines in the README's own shorthand (``a|b``,
``[--quick]``, ``FILE``) are skipped; so are other tools' commands."""

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("ocap_core", "ocap_cli", "ocap_service", "ocap_daemon", "tests", "bench", "examples", "scripts", "systemd", "docs", "bin")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a Markdown file named anywhere, or a path that starts at the repository root or above a file's folder
PATH = re.compile(r"(?<![\w/.$-])((?:\.\./)+[\w./-]+|(?:" + "|".join(TOP) + r")/[\w./-]*\w|[\w./-]*\w\.md)\b")


def _inside(doc: Path, ref: str) -> bool:
    """``ref`` names a file or folder of the repository, from ``doc``'s folder or from the root."""
    for base in (doc.parent, ROOT):
        target = (base / ref).resolve()
        if target.exists() and (target == ROOT or ROOT in target.parents):
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_refer_only_to_files_in_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    missing = []
    for m in LINK.finditer(text):
        ref = m.group(1).split("#")[0]
        if ref and not re.match(r"[a-z]+:", ref) and not _inside(doc, ref):
            missing.append(("link", ref))
    for m in PATH.finditer(text):
        if not _inside(doc, m.group(1)):
            missing.append(("path", m.group(1)))
    assert not missing, f"{doc.relative_to(ROOT)} sends the reader to what a clone does not have: {missing}"


SHORTHAND = re.compile(r"\||\[|\]|^[A-Z]+$|\$")


def readme_commands():
    """(line number, argv) of each command of the README's ```sh blocks (continuations joined, sudo,
    comments and a trailing & dropped, ``a && b`` split)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"```sh\n(.*?)```", text, re.S):
        start = text[:m.start()].count("\n") + 2
        body = re.sub(r"\\\n", " ", m.group(1))
        for i, line in enumerate(body.splitlines()):
            for part in line.split("&&"):
                argv = shlex.split(part.strip().rstrip("&"), comments=True)
                if argv and argv[0] == "sudo":
                    argv = argv[1:]
                if argv:
                    out.append((start + i, argv))
    return out


README_COMMANDS = readme_commands()


def _parse(parser, argv):
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        assert e.code == 0, f"{argv}: usage error"


def test_the_readme_has_commands_to_check():
    names = {argv[0] for _, argv in README_COMMANDS}
    assert {"ocap", "ocapctl", "ocapd", "ocap-python", "bash"} <= names, names


@pytest.mark.parametrize("line,argv", README_COMMANDS, ids=[f"README:{n}" for n, _ in README_COMMANDS])
def test_a_readme_command_parses(line, argv):
    if argv[0] in ("python", "python3"):
        assert not (len(argv) > 2 and argv[1] == "-m" and argv[2].split(".")[0] in
                    ("ocap_service", "ocap_daemon", "ocap_core", "ocap_cli", "pytest", "bench")), \
            f"README line {line}: {' '.join(argv)} runs the system's python; the environment's is ocap-python"
        return
    if any(SHORTHAND.search(a) for a in argv):
        return
    if argv[0] == "ocap":
        from ocap_cli.main import build_parser
        _parse(build_parser(), argv[1:])
    elif argv[0] == "ocapctl":
        from ocap_service.ctl import build_parser
        _parse(build_parser(), argv[1:])
    elif argv[0] == "ocapd":
        from ocap_daemon.main import build_parser
        _parse(build_parser(), argv[1:])
    elif argv[:3] == ["ocap-python", "-m", "ocap_service"]:
        from ocap_service.__main__ import build_parser
        _parse(build_parser(), argv[3:])
    elif argv[0] == "bash":
        assert (ROOT / argv[1]).is_file(), f"README line {line}: no {argv[1]}"


def _readme_commands(prog: str) -> list:
    """Every ``PROG ...`` command of README.md's shell blocks (``readme_commands``)."""
    words = prog.split()
    return [argv for _, argv in README_COMMANDS if argv[:len(words)] == words]


def test_the_readmes_ocap_import_examples_use_the_current_flags():
    """Each ``ocap import`` of the README parses with today's ``ocap`` (issue 13: --preset, --scale 1/255)."""
    from ocap_cli import build_parser
    from ocap_core.preprocess import parse_scale

    commands = _readme_commands("ocap import")
    assert len(commands) >= 2, commands
    for argv in commands:
        args = build_parser().parse_args(argv[1:])          # exits 2 on a flag that is gone
        if args.scale is not None:
            parse_scale(args.scale)
    assert any("--scale" in a and "1/255" in a for a in commands), commands
    assert any("--preset" in a for a in commands), commands


def test_the_readmes_ocapctl_commands_are_the_command_table():
    """README's list of ocapctl commands (the block of ``ocapctl ...`` lines under "The daemon") names
    exactly the commands of ocap_service/commands.py, the table ocapctl and the socket are built from."""
    from ocap_service.commands import COMMANDS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set()
    for line in text.splitlines():
        if line.startswith("ocapctl ") and "--socket" not in line:
            words = line.split("#")[0].split()[1:]
            listed |= {w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)}
    assert listed == {c.name for c in COMMANDS}
