"""`modeltheft watermark verify` against model files and a served copy, for 10 classes and 2,
and pooled over the many keys of a rotating thief."""

import json
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier

from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.cli.app import main
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.watermark import load_records, verify_pooled, watermarked_clients
from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.state import SqliteStore
from modeltheft.tasks import digits_task, get_task
from modeltheft.victim import LoadedVictim, save_victim, train_victim
from tests.conftest import KEYS, noise_thief


@pytest.fixture(scope="module")
def stolen(
    tmp_path_factory: pytest.TempPathFactory, victim: LoadedVictim
) -> tuple[Path, Path, Path]:
    """A thief's copy (300 noise queries through `recommended` on SQLite) and an honest model.

    Built once for the module: the tests only read the state and the two files.
    """
    tmp_path = tmp_path_factory.mktemp("stolen")
    db = tmp_path / "state.db"
    X, labels = noise_thief(victim.model, db)
    copy = LogisticRegression(max_iter=1000).fit(X, labels)
    copy_path = (
        save_victim(copy, tmp_path / "copy.skops", {"family": "lr"}) and tmp_path / "copy.skops"
    )
    split = digits_task().data
    own = LogisticRegression(max_iter=1000).fit(split.X_train, split.y_train)
    sio.dump(own, tmp_path / "own.skops")  # a model found elsewhere: no metadata of ours
    return db, copy_path, tmp_path / "own.skops"


def test_watermark_verify_finds_the_copy_and_clears_an_independent_model(
    stolen: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, copy_path, own_path = stolen
    report = tmp_path / "verdict.json"
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--json", str(report)]
    assert main([*argv, "--suspect", str(copy_path)]) == 0
    assert "suspect is a copy" in capsys.readouterr().out
    verdict = json.loads(report.read_text())
    [client] = verdict["clients"]
    assert client["client"] == "mallory" and client["p_value"] < 1e-6
    assert 240 <= client["watermarks"] <= 300 and client["matches"] > client["watermarks"] / 9 * 2
    assert client["chance_rate_at_most"] == pytest.approx(1 / 9, abs=1e-6)
    assert verdict["classes"] == list(range(10))
    assert main([*argv, "--suspect", str(own_path)]) == 0
    assert "shows no evidence of copying" in capsys.readouterr().out
    assert json.loads(report.read_text())["clients"][0]["p_value"] > 0.01


def test_watermark_verify_queries_a_served_copy(
    stolen: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, copy_path, _ = stolen
    settings = Settings(keys=KeyRing.from_pairs(KEYS), model_path=copy_path, defense="none")
    server = BackgroundServer(create_app(settings)).start()
    try:
        argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--suspect", server.url]
        assert main([*argv, "--api-key", KEYS["alice"]]) == 0
    finally:
        server.stop()
    assert "suspect is a copy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--client", "nobody"], "no watermark records for nobody"),
        (["--suspect", "/nonexistent.skops"], "neither a model file nor an http URL"),
    ],
)
def test_watermark_verify_bad_input_is_one_line(
    stolen: tuple[Path, Path, Path],
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db, copy_path, _ = stolen
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}"]
    if "--suspect" not in extra:
        argv += ["--suspect", str(copy_path)]
    assert main([*argv, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_watermark_verify_on_a_binary_task_with_string_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two classes named by strings: the copy is found, the verdict says chance is exactly 1/2."""
    names = np.array(["benign", "malignant"])
    task = get_task("breast-cancer").with_classes(names)
    X_train, y_train = task.data.victim_rows()
    model = RandomForestClassifier(30, random_state=0).fit(X_train, names[1 - y_train])
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    guarded = GuardedModel(model, load_pipeline("recommended"), store=store, seed=0, task=task)
    rng = np.random.default_rng(0)
    X = task.clip(rng.uniform(task.lower, task.upper, size=(300, task.n_features)))
    labels = np.concatenate(
        [guarded.answer("eve", X[i : i + 20]).labels for i in range(0, 300, 20)]
    )
    store.close()
    copy = KNeighborsClassifier(1).fit(X, labels)  # remembers every answer it was given
    sio.dump(copy, tmp_path / "copy.skops")
    sio.dump(model, tmp_path / "own.skops")  # the victim itself never saw the watermarks
    report = tmp_path / "verdict.json"
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--json", str(report)]
    assert main([*argv, "--suspect", str(tmp_path / "copy.skops")]) == 0
    out = capsys.readouterr().out
    assert "suspect is a copy" in out and "1/(k-1) = 1" in out and "chance =" in out
    verdict = json.loads(report.read_text())
    [client] = verdict["clients"]
    assert verdict["classes"] == ["benign", "malignant"]
    assert client["classes"] == 2 and client["chance_rate"] == 0.5 and client["p_value"] < 1e-6
    assert main([*argv, "--suspect", str(tmp_path / "own.skops")]) == 0
    assert "shows no evidence of copying" in capsys.readouterr().out
    assert json.loads(report.read_text())["clients"][0]["p_value"] > 0.001


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A thief rotating keys every 9 queries (40 keys, one row per request) against
    `recommended` without its service monitor, asking rendered digits; its copy is a 1-NN
    on the answers.

    The victim is trained without the attacker-public rows and served with its held-out task.
    Returns the state, the copy's file and the thief's queries.
    """
    tmp_path = tmp_path_factory.mktemp("rotated")
    task = digits_task().held_out()
    model = train_victim("rf", split_name="holdout").model
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    # Without the service-wide monitor, whose watch would make each key's evidence strong on
    # its own: the pool must catch a rotating thief that no detector noticed.
    pipeline = load_pipeline("recommended")
    pipeline.stages = [s for s in pipeline.stages if s.name != "service_monitor"]
    guarded = GuardedModel(model, pipeline, store=store, seed=0, task=task)
    X = RenderedDigits().draw(360, np.random.default_rng(5), task)
    labels = np.concatenate(
        [guarded.answer(f"key-{i // 9:02d}", X[i : i + 1]).labels for i in range(len(X))]
    )
    store.close()
    sio.dump(KNeighborsClassifier(1).fit(X, labels), tmp_path / "copy.skops")
    return db, tmp_path / "copy.skops", X


def test_a_30_key_rotated_copy_is_caught_by_the_pooled_test(
    rotated: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each key holds a few watermarks (weak alone, even before correction); the pool holds
    them all. Holm over the clients + pooled keeps the family-wise error at alpha."""
    db, copy_path, _ = rotated
    report = tmp_path / "verdict.json"
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--json", str(report)]
    assert main([*argv, "--suspect", str(copy_path)]) == 0
    out = capsys.readouterr().out
    assert "suspect is a copy: strongest evidence from the pool of" in out and "Holm" in out
    verdict = json.loads(report.read_text())
    clients, pooled = verdict["clients"], verdict["pooled"]
    assert len(clients) >= 30 and verdict["tests"] == len(clients) + 1
    assert all(c["p_value"] > 1e-6 and c["holm_p"] > 1e-4 for c in clients)
    assert pooled["holm_p"] == verdict["p_value"] < 1e-6 and verdict["copy"] is True
    assert pooled["holm_p"] == pytest.approx(pooled["p_value"] * verdict["tests"])
    assert pooled["watermarks"] == sum(c["watermarks"] for c in clients)  # no row twice
    assert pooled["clients_pooled"] == [c["client"] for c in clients]


def test_independent_models_show_no_pooled_evidence(
    rotated: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five models trained on real digits, never on our answers: pooled p > 0.01 each."""
    db, _, _ = rotated
    store = SqliteStore(db)
    records = [load_records(store, name) for name in watermarked_clients(store)]
    store.close()
    split = digits_task().data
    models = [
        LogisticRegression(max_iter=1000),
        KNeighborsClassifier(3),
        RandomForestClassifier(50, random_state=1),
        GaussianNB(),
        DecisionTreeClassifier(random_state=2),
    ]
    for model in models:
        model.fit(split.X_train, split.y_train)
        pooled = verify_pooled(records, [model.predict(r.X) for r in records])
        assert pooled.p_value > 0.01, type(model).__name__
    sio.dump(models[0], tmp_path / "own.skops")
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--suspect"]
    assert main([*argv, str(tmp_path / "own.skops")]) == 0
    assert "shows no evidence of copying" in capsys.readouterr().out


def test_watermark_verify_never_creates_a_missing_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["watermark", "verify", "--suspect", "copy.skops"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no state database at modeltheft-state.db" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_watermark_verify_leaves_the_state_file_unchanged(
    stolen: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, copy_path, _ = stolen
    before = db.read_bytes()
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--suspect", str(copy_path)]
    assert main(argv) == 0
    assert "suspect is a copy" in capsys.readouterr().out
    assert db.read_bytes() == before
