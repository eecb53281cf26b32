"""Every command in the README's shell blocks runs as written after the quick start: ``ocap``, ``ocapctl``,
``ocapd`` and ``ocap-python -m ocap_service`` lines parse with the real parsers (their commands, flags
and choices exist), and no line runs ocap's modules or the tests with a bare ``python``, which is the
system's Python, not the environment's with ocap's dependencies (``ocap-python``). Lines in the README's
own shorthand (``a|b``, ``[--quick]``, ``FILE``) are skipped; so are the commands of other tools."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


COMMANDS = readme_commands()


def _parse(parser, argv):
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        assert e.code == 0, f"{argv}: usage error"


def test_the_readme_has_commands_to_check():
    names = {argv[0] for _, argv in COMMANDS}
    assert {"ocap", "ocapctl", "ocapd", "ocap-python", "bash"} <= names, names


@pytest.mark.parametrize("line,argv", COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
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
