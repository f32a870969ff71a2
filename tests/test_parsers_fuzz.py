"""Property tests for the configuration parsers: whatever the text, the only error is ConfigError.

Keys (``MODELTHEFT_API_KEYS`` and keys files), state URLs, defense TOML files and the CLI's
duration and checkpoint options. A KeyError, TypeError, ValueError or IndexError escaping
one of them would be a traceback instead of a one-line message.
"""

import contextlib
import string
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from modeltheft.cli.attack import parse_checkpoints
from modeltheft.defenses.presets import STAGES, build_stage, load_pipeline
from modeltheft.errors import ConfigError
from modeltheft.service.auth import KeyRing, hash_key
from modeltheft.state import open_store
from modeltheft.state.audit import parse_duration

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Any code point, lone surrogates included: environment values carry undecodable bytes as
# surrogates (PEP 383).
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=60)
SEPARATORS = st.sampled_from([":", ",", "#", "$", " ", "\n", "\t", "\x00", "sha256", "=", "\ufeff"])
# Text made mostly of the characters the parser cares about, so that it gets past them.
NEAR = st.lists(SEPARATORS | st.text(string.ascii_letters + string.hexdigits, max_size=8)).map(
    "".join
)
TEXT = ANY_TEXT | NEAR


def only_config_errors(call, *args: object) -> object:
    """``call(*args)``'s result, or None if it raised ConfigError (anything else fails)."""
    try:
        return call(*args)
    except ConfigError as exc:
        assert str(exc)  # a message, never empty
        return None


# ---- API keys -------------------------------------------------------------------------------


@FUZZ
@given(value=TEXT)
@example(value="alice:\udcff")  # an undecodable byte of the environment
@example(value="a:b,a:c")
@example(value=":::,,,")
def test_keys_env_value(value: str) -> None:
    ring = only_config_errors(KeyRing.from_env_value, value)
    if ring is not None:
        assert len(ring) == len(set(ring.names))


LINE = st.one_of(
    TEXT,
    st.builds(
        lambda name, salt, digest: f"{name}:sha256${salt}${digest}",
        TEXT,
        st.text(string.hexdigits, max_size=40),
        st.text(string.hexdigits, min_size=60, max_size=68),
    ),
    st.builds(lambda name, key: f"{name}:{hash_key(key)}", TEXT, st.text(max_size=10)),
)


@FUZZ
@given(content=st.lists(LINE, max_size=6).map("\n".join), raw=st.binary(max_size=80))
@example(content="", raw=b"\xff\xfe\x00")  # not UTF-8
@example(content="alice:sha256$zz$" + "0" * 64, raw=b"")
def test_keys_file(tmp_path: Path, content: str, raw: bytes) -> None:
    path = tmp_path / "keys"
    for data in (content.encode("utf-8", "surrogateescape"), raw, content.encode() + raw):
        path.write_bytes(data)
        only_config_errors(KeyRing.from_file, path)
    only_config_errors(KeyRing.from_file, tmp_path / "missing")
    only_config_errors(KeyRing.from_file, tmp_path)  # a folder


# ---- state URLs -----------------------------------------------------------------------------


def _stays_inside(path: str, root: Path) -> bool:
    """Whether SQLite would create ``path`` under ``root`` (relative, no ``..``, no ``~``)."""
    if not path or path.startswith(("/", "~")) or "\\" in path:
        return False
    return ".." not in path.split("/")


def _where(url: str) -> str | None:
    """The SQLite path ``open_store(url)`` would use, '' for no file, None for a network URL."""
    text = url.strip()
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme in ("redis", "rediss"):
            return None
        if scheme == "sqlite" and text.lower().startswith("sqlite:///"):
            return text[len("sqlite:///") :]
        return ""
    return text


URL = st.one_of(
    TEXT,
    st.builds("".join, st.lists(st.sampled_from(["memory", "sqlite", "SQLite", "://", "/", "x"]))),
    st.builds(lambda rest: "sqlite:///" + rest, TEXT),
    st.builds(lambda rest: "memory://" + rest, TEXT),
    st.builds(lambda scheme, rest: f"{scheme}://{rest}", TEXT, TEXT),
)


@FUZZ
@given(url=URL)
@example(url="state.db\x00")
@example(url="sqlite:///\ud800")
@example(url="sqlite:///" + "y" * 300)
@example(url="sqlite:///.")
@example(url="memory://x")
@example(url="  ")
def test_state_url(tmp_path: Path, url: str) -> None:
    where = _where(url)
    assume(where is not None)
    # A plain or sqlite:/// path must stay inside this test's folder.
    assume(where == "" or _stays_inside(where, tmp_path))
    with contextlib.chdir(tmp_path):
        store = only_config_errors(open_store, url)
        if store is not None:
            store.close()


@FUZZ
@given(
    userinfo=st.one_of(st.just(""), TEXT.map(lambda t: t.replace("@", "") + "@")),
    rest=TEXT,
    query=st.lists(
        st.tuples(
            st.sampled_from(
                ["db", "foo", "socket_timeout", "ssl_cert_reqs", "protocol", "connection_class"]
            )
            | TEXT,
            TEXT,
        ),
        max_size=3,
    ),
)
@example(userinfo="", rest="0", query=[("foo", "bar")])
@example(userinfo="", rest="0", query=[("connection_class", "x")])
def test_redis_url_on_a_closed_port(userinfo: str, rest: str, query: list) -> None:
    """Host fixed to a closed loopback port: the URL's other parts are what is fuzzed."""
    assume(all(c not in userinfo for c in "/?#[]"))
    rest = rest.replace("?", "").replace("#", "")
    suffix = "&".join(f"{k}={v}" for k, v in query)
    url = f"redis://{userinfo}127.0.0.1:1/{rest}" + (f"?{suffix}" if suffix else "")
    assert only_config_errors(open_store, url) is None  # nothing listens on port 1


# ---- defense pipelines ----------------------------------------------------------------------

VALUE = st.recursive(
    st.none().map(lambda _: "x")
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3),
    max_leaves=5,
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _params_of(kind: str) -> list[str]:
    import inspect

    cls = STAGES[kind]
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self",)]


STAGE = st.sampled_from(sorted(STAGES)).flatmap(
    lambda kind: st.builds(
        lambda params, typ: {"type": typ, **params},
        st.dictionaries(st.sampled_from([*_params_of(kind), "bogus"]), VALUE, max_size=4),
        st.just(kind) | VALUE,
    )
)


def _stage_toml(stage: dict) -> str:
    lines = ["[[stages]]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in stage.items()]
    return "\n".join(lines)


TOML = st.one_of(
    TEXT,
    st.lists(STAGE, max_size=3).map(lambda stages: "\n\n".join(_stage_toml(s) for s in stages)),
    st.builds(lambda v: f"stages = {_toml_value(v)}", VALUE),
    st.builds(lambda k, v: f"{k} = {_toml_value(v)}", st.sampled_from(["other", "stages"]), VALUE),
)


@FUZZ
@given(content=TOML)
@example(content='[[stages]]\ntype = ["token_bucket"]')
@example(content='[[stages]]\ntype = "token_bucket"\ncapacity = "many"')
@example(content='[[stages]]\ntype = "prada"\ndelta = nan')
@example(content="stages = [1, 2]")
@example(content="\udcff")
def test_defense_toml(tmp_path: Path, content: str) -> None:
    path = tmp_path / "defense.toml"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with contextlib.suppress(tomllib.TOMLDecodeError, UnicodeError):
        tomllib.loads(content)
    only_config_errors(load_pipeline, path)
    only_config_errors(load_pipeline, str(path))


@FUZZ
@given(name=TEXT)
def test_defense_name(name: str) -> None:
    assume("/" not in name and "\\" not in name)  # a name, not a path elsewhere
    with contextlib.chdir(Path(__file__).parent):
        only_config_errors(load_pipeline, name)


# ---- CLI options ----------------------------------------------------------------------------


@FUZZ
@given(text=TEXT | st.from_regex(r"\s*[0-9٠-٩]{1,400}(\.[0-9]+)?\s*[smhdwSMHDWſK]?\s*"))
@example(text="5ſ")  # LATIN SMALL LETTER LONG S matches 's' case-insensitively
@example(text="9" * 400)
@example(text="1e3")
def test_parse_duration(text: str) -> None:
    seconds = only_config_errors(parse_duration, text, "--since")
    if seconds is not None:
        assert seconds >= 0 and seconds != float("inf")


@FUZZ
@given(text=TEXT | st.lists(st.integers() | TEXT, max_size=5).map(lambda v: ",".join(map(str, v))))
@example(text="1" * 5000)
def test_parse_checkpoints(text: str) -> None:
    values = only_config_errors(parse_checkpoints, text, 1000)
    if values is not None:
        assert all(isinstance(v, int) for v in values)


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_every_stage_builds_from_its_defaults(kind: str) -> None:
    """A stage table with only its type: built, or a ConfigError for a missing parameter."""
    only_config_errors(build_stage, {"type": kind})
