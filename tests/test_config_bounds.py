"""Issue 20, cases 4 and 8: a config cannot make slam3r use unbounded memory or time, or run code.

* YAML aliases are counted before anything expands them (an "anchor bomb" of a few hundred bytes
  expands to 9^9 values): refused in one line, under known keys too;
* nesting too deep, a file that is not UTF-8, a number of 5000 digits: one line naming the file
  (no RecursionError / UnicodeDecodeError / ValueError traceback);
* the ``output`` template names only ``{name}`` and ``{time}``: no attribute access
  (``{name.__class__.__name__}``), no format spec (``{name:>99999999999}``), no unknown field.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from slam3r_app.config import MAX_YAML_VALUES, load_config
from slam3r_app.errors import ConfigError
from tests.cli_helpers import REPO, _env, cli, fake_config

BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9) if p else ', '.join(['lol'] * 9)}]\n"
               for p, c in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh"))


def _load_in_a_small_process(path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``load_config(path)`` in a process limited to 1 GiB of address space (the bomb needs 4+ GiB)."""
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        sys.path.insert(0, {str(REPO)!r})
        from slam3r_app.config import load_config
        from slam3r_app.errors import ConfigError
        try:
            load_config({str(path)!r})
        except ConfigError as e:
            print("ConfigError:", e)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=_env())


@pytest.mark.parametrize("key", ["disable", "plugins", "name", "unknown_key", "fusion"])
def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path, key):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + f"{key}: [{', '.join(['*h'] * 9)}]\n")
    assert len(path.read_bytes()) < 600
    try:
        p = _load_in_a_small_process(path)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a 600-byte config did not end within the hang guard")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith(f"ConfigError: {path}: too large once its YAML aliases (*name) are expanded"), p.stdout
    assert f"more than {MAX_YAML_VALUES} values" in p.stdout and len(p.stdout) < 400


def test_honest_aliases_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("common: &c {max_frames: 5, stride: 2}\nsource:\n  <<: *c\n  type: synthetic\n")
    with pytest.raises(ConfigError, match="unknown config key 'common'"):
        from slam3r_app.config_check import load_and_check

        load_and_check(path)
    path.write_text("source: &s\n  max_frames: 5\n  stride: 2\nname: run\n")
    cfg = load_config(path)
    assert cfg.run.source.max_frames == 5 and cfg.run.source.stride == 2


@pytest.mark.parametrize("content,message", [
    (b"a: " + b"[" * 100_000, "nested too deeply"),
    (b"a: " + b"[" * 200 + b"]" * 200, "nested too deeply"),
    (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
    (b"seed: " + b"9" * 5000 + b"\n", "a number is too long (5000 digits"),
    (b"name: [unclosed\n", "not valid YAML"),
])
def test_malformed_files_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    text = str(exc.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text and len(text) < 400, text


@pytest.mark.parametrize("template,ok", [
    ("runs/{name}-{time}", True),
    ("runs/{{literal}}/{name}", True),
    ("runs/{nope}", False),
    ("runs/{name:>99999999999}", False),
    ("runs/{name.__class__.__name__}", False),
    ("runs/{name!r}", False),
    ("runs/{0}", False),
    ("runs/{name", False),
])
def test_the_output_template_names_only_its_fields(template, ok):
    if ok:
        assert load_config(data={"output": template}).run.output == template
        return
    with pytest.raises(ConfigError) as exc:
        load_config(data={"output": template})
    assert "output" in str(exc.value) and ("not a field of the template" in str(exc.value)
                                           or "not a valid template" in str(exc.value))


@pytest.mark.parametrize("override,message", [
    ("output=runs/{nope}", "{nope} is not a field of the template"),
    ("output=runs/{name.__class__.__name__}", "is not a field of the template"),
    ("seed=" + "9" * 5000, "a number is too long"),
])
def test_the_command_line_gives_one_line_and_no_folder(tmp_path, override, message):
    p = cli(["--config", str(fake_config(tmp_path)), "--set", override], tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert message in p.stderr and len(p.stderr) < 1000, p.stderr[-2000:]
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("NameError*"))
