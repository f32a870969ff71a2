from pathlib import Path

import pytest

from modeltheft.errors import ConfigError
from modeltheft.service.auth import KeyRing, hash_key, new_key


def test_env_value_pairs_verify_and_only_hashes_are_kept() -> None:
    ring = KeyRing.from_env_value("alice:k1, bob:k2")
    assert ring.verify("k1") == "alice"
    assert ring.verify("k2") == "bob"
    assert ring.verify("k3") is None
    stored = [v for e in ring._entries for v in vars(e).values()]
    assert not {"k1", b"k1", "k2", b"k2"} & set(stored)  # names, salts and digests only


@pytest.mark.parametrize("value", ["alice", "alice:", ":k", "a:1,a:2"])
def test_bad_env_values_are_config_errors(value: str) -> None:
    with pytest.raises(ConfigError):
        KeyRing.from_env_value(value)


def test_keys_file_holds_hashes(tmp_path: Path) -> None:
    key = new_key()
    path = tmp_path / "keys"
    path.write_text(f"# clients\ncarol:{hash_key(key)}\n\n")
    ring = KeyRing.from_file(path)
    assert ring.verify(key) == "carol"
    assert ring.verify(key + "x") is None
    assert key not in path.read_text()


@pytest.mark.parametrize("line", ["carol:plaintext", "carol:sha256$zz$00", "carol:sha256$00$abcd"])
def test_bad_keys_file_lines_are_config_errors(tmp_path: Path, line: str) -> None:
    path = tmp_path / "keys"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError):
        KeyRing.from_file(path)


def test_sources_combine_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"carol:{hash_key('kc')}\n")
    ring = KeyRing.from_sources(path, env={"MODELTHEFT_API_KEYS": "dave:kd"})
    assert sorted(ring.names) == ["carol", "dave"]


def test_missing_keys_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read keys file"):
        KeyRing.from_file(tmp_path / "absent")


def test_verified_keys_are_remembered_by_digest_and_unknown_keys_never() -> None:
    ring = KeyRing.from_pairs({f"c{i}": f"key-{i}-" + "x" * 30 for i in range(50)})
    for _ in range(3):
        assert ring.verify("key-7-" + "x" * 30) == "c7"
        assert ring.verify("key-8-" + "x" * 30) == "c8"
        assert ring.verify("key-9-" + "y" * 30) is None
    remembered = ring._verified
    assert sorted(remembered.values()) == ["c7", "c8"]
    assert all(len(tag) == 32 and b"key-" not in tag for tag in remembered)
    assert ring.verify("key-7-" + "x" * 29) is None and ring.verify("") is None


@pytest.mark.parametrize(
    "name",
    ["evil\r\nINFO modeltheft.access: POST /v1/predict 200 client=alice", "a b", 'a"b', "é", ""],
)
def test_client_names_that_could_forge_log_lines_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as refused:
        KeyRing.from_pairs({name: "key-0123456789"})
    assert "\n" not in str(refused.value) and "\r" not in str(refused.value)
    assert "client name" in str(refused.value)
    if name and "\n" not in name:  # a keys file line cannot hold a line break
        path = tmp_path / "keys"
        path.write_text(f"{name}:{hash_key('k')}\n")
        with pytest.raises(ConfigError, match="client name"):
            KeyRing.from_file(path)


def test_crlf_in_the_environment_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="client name"):
        KeyRing.from_env_value("mallory\r\nGET /v1/predict 200 client=alice:k1")


@pytest.mark.parametrize("name", ["alice", "svc-01", "team.bot_2", "ops@example.org", "a+b"])
def test_ordinary_client_names_are_accepted(name: str) -> None:
    assert KeyRing.from_pairs({name: "k"}).names == [name]
