"""The readers and writers of diffatlas.io and the checks of diffatlas.validate, one behaviour each."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import time
from pathlib import Path

import pytest

from diffatlas import io as dio
from diffatlas import validate
from diffatlas.errors import UserError

SRC = Path(__file__).resolve().parent.parent / "src" / "diffatlas"


# ---- JSON-lines logs ---------------------------------------------------------------------------

def test_append_cuts_a_torn_last_line_first(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    dio.append_jsonl(log, {"kimg": 1})
    with open(log, "a") as f:
        f.write('{"kimg": 2, "met')  # a writer killed mid-line
    assert [r["kimg"] for r in dio.read_jsonl(log, "log")] == [1]  # readers skip the fragment
    dio.append_jsonl(log, {"kimg": 3})
    assert log.read_text() == '{"kimg": 1}\n{"kimg": 3}\n'


def test_append_keeps_a_whole_last_record_that_lacks_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"kimg": 1}')  # e.g. written by hand
    dio.append_jsonl(log, {"kimg": 2})
    assert [r["kimg"] for r in dio.read_jsonl(log, "log")] == [1, 2]


def test_a_bad_complete_line_names_file_line_and_fix(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"kimg": 1}\n\xff\xfe\n{"kimg": 3}\n')
    with pytest.raises(UserError, match=r"log\.jsonl' line 2 is not a JSON record; delete it"):
        dio.read_jsonl(log, "the log", fix="delete it")
    log.write_text('{"kimg": 1}\n{"value": 2}\n')
    with pytest.raises(UserError, match="line 2 lacks the field 'kimg'"):
        dio.read_jsonl(log, "the log", fields={"kimg": "number"})
    log.write_text('{"kimg": NaN}\n')
    with pytest.raises(UserError, match="not a number"):
        dio.read_jsonl(log, "the log", fields={"kimg": "number"})


# ---- whole files -------------------------------------------------------------------------------

def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "stats.npz"
    dio.atomic_write_bytes(p, b"old")

    def write(f):
        f.write(b"half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        dio.atomic_write(p, write)
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["stats.npz"]


def test_atomic_files_get_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    """Readable by whoever may read a plainly written file (a shared study folder), not 0600."""
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    dio.atomic_write_json(tmp_path / "atomic.json", {"a": [1, 2]})
    assert (tmp_path / "atomic.json").stat().st_mode == plain.stat().st_mode
    assert (tmp_path / "atomic.json").read_text() == '{\n "a": [\n  1,\n  2\n ]\n}\n'


def test_a_folder_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "classifier"
    with pytest.raises(RuntimeError, match="killed"):
        with dio.atomic_dir(final) as tmp:
            (tmp / "model.safetensors").write_bytes(b"weights")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # nothing published, no temporary folder left
    final.mkdir()  # an empty folder in the way is replaced
    with dio.atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-classifier-")
        (tmp / "a.json").write_text("1")
    assert [q.name for q in tmp_path.iterdir()] == ["classifier"] and (final / "a.json").read_text() == "1"
    (tmp_path / "plain").mkdir()
    assert final.stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkdtemp's 0700


@pytest.mark.parametrize("if_exists, kept", [("error", "old"), ("keep", "old"), ("replace", "new")])
def test_a_folder_already_published_is_kept_or_replaced_as_asked(tmp_path: Path, if_exists: str, kept: str) -> None:
    final = tmp_path / "snapshot-000001.000"
    final.mkdir()
    (final / "meta.json").write_text("old")
    with contextlib.ExitStack() as stack:
        if if_exists == "error":
            stack.enter_context(pytest.raises(OSError))
        with dio.atomic_dir(final, if_exists=if_exists) as tmp:
            (tmp / "meta.json").write_text("new")
    assert (final / "meta.json").read_text() == kept
    assert [q.name for q in tmp_path.iterdir()] == [final.name]


def test_every_cache_is_under_one_root(monkeypatch, tmp_path: Path) -> None:
    from diffatlas.data import load_dataset
    from diffatlas.metrics.eval_classifier import default_classifier_dir
    from diffatlas.metrics import reference

    monkeypatch.setenv("DIFFATLAS_CACHE", "")  # empty is unset, not the working directory
    assert dio.cache_root() == Path.home() / ".cache" / "diffatlas"
    monkeypatch.setenv("DIFFATLAS_CACHE", str(tmp_path))
    assert reference.default_cache_dir() == tmp_path / "refstats"
    assert default_classifier_dir("digits").parent == tmp_path / "classifiers"
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "mnist"))):  # where downloaded data is looked for
        load_dataset("mnist")


# ---- YAML --------------------------------------------------------------------------------------

def test_yaml_refuses_a_key_given_twice_but_allows_merge_overrides() -> None:
    with pytest.raises(UserError, match="line 3: found the key 'lr' twice"):
        dio.parse_yaml("train:\n  lr: 1\n  lr: 2\n", "config")
    merged = dio.parse_yaml("base: &b {lr: 1, batch: 8}\ntrain:\n  <<: *b\n  lr: 2\n", "config")
    assert merged["train"] == {"lr": 2, "batch": 8}


def test_yaml_alias_bomb_is_refused_without_expanding_it() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    text = "\n".join(levels) + "\n"  # 9^9 ~ 387 million values once expanded
    t = time.perf_counter()
    with pytest.raises(UserError, match="aliases"):
        dio.parse_yaml(text, "study file")
    assert time.perf_counter() - t < 5
    assert dio.parse_yaml("a: &a [1, 2]\nb: *a\n", "ok") == {"a": [1, 2], "b": [1, 2]}  # plain aliases still work


def test_yaml_that_refers_to_itself_or_nests_too_deep_is_refused() -> None:
    with pytest.raises(UserError, match="refers to itself"):
        dio.parse_yaml("a: &a [*a]\n", "config")
    with pytest.raises(UserError, match="nested too deeply|does not parse"):
        dio.parse_yaml("[" * 20000 + "]" * 20000, "config")


# ---- other readers -----------------------------------------------------------------------------

def test_json_reader_names_the_missing_field(tmp_path: Path) -> None:
    p = tmp_path / "meta.json"
    p.write_text('{"kimg": 1}')
    with pytest.raises(UserError, match=r"meta\.json' lacks the field 'step'; delete the snapshot"):
        dio.read_json(p, "snapshot record", "delete the snapshot", fields={"kimg": "number", "step": "integer"})
    with pytest.raises(UserError, match="is a folder"):
        dio.read_json(tmp_path, "snapshot record")


def test_torch_files_load_weights_only(tmp_path: Path) -> None:
    import torch

    class Code:  # anything torch.load would have to unpickle
        def __reduce__(self):
            return (print, ("this ran",))

    p = tmp_path / "state.pt"
    torch.save({"x": Code()}, p)
    with pytest.raises(UserError, match="holds more than tensors"):
        dio.read_torch(p, "snapshot state")


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    """The loading floor: no torch.load without weights_only=True, and torch >= 2.6 (where it is the default,
    also for third-party loads such as torch-fidelity's Inception weights)."""
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" \
                    and getattr(node.func.value, "id", None) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path}:{node.lineno}"
    pyproject = (SRC.parent.parent / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', pyproject)
    assert floor and (int(floor[1]), int(floor[2])) >= (2, 6)


def test_a_folder_is_used_by_one_process_at_a_time(tmp_path: Path) -> None:
    with dio.exclusive(tmp_path, "run directory"):
        with pytest.raises(UserError, match="in use by another diffatlas process"):
            with dio.exclusive(tmp_path, "run directory"):
                pass
    with dio.exclusive(tmp_path, "run directory"):  # released
        pass


# ---- validate ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), "-inf", "1e309", True, "ten", 0, 1.5])
def test_numbers_outside_their_range_are_refused_with_the_range(value) -> None:
    with pytest.raises(UserError, match=r"train\.batch must be an integer in \[1, 2147483647\]"):
        validate.number(value, "train.batch", validate.COUNT)


def test_numbers_inside_are_returned_as_their_kind() -> None:
    assert validate.number("0x10", "n", validate.COUNT) == 16
    assert validate.number(3.0, "n", validate.COUNT) == 3
    assert validate.number("1e-3", "lr", validate.POSITIVE) == 0.001
    assert validate.Range(0, 1, hi_open=True).text() == "a finite number in [0, 1)"


def test_seeds_stay_in_range_for_every_sample() -> None:
    assert validate.seeds(validate.SEED_MAX - 9, 10) == validate.SEED_MAX - 9
    with pytest.raises(UserError, match=r"seeds 4294967287\.\.4294967296 .* use --seed <= 4294967286"):
        validate.seeds(validate.SEED_MAX - 8, 10)


def test_requests_that_cannot_fit_are_refused_with_the_limit(monkeypatch) -> None:
    monkeypatch.setattr(validate, "available_memory", lambda dev="cpu": 1000 * 256)
    validate.memory(1000 * 256, "exactly enough", per_item=256, item="samples")
    with pytest.raises(UserError, match="more than the 250.0 KiB available on cpu; at most about 1,000 samples fit"):
        validate.memory(1001 * 256, "1001 samples", per_item=256, item="samples")


def test_places_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        validate.writable_dir(f / "run", "run directory")
    with pytest.raises(UserError, match="is a folder"):
        validate.writable_file(tmp_path, "--out")
    assert validate.writable_dir(tmp_path / "new" / "deeper", "run directory") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()
    for bad in ("..", "../x", "/abs", "a/b", "x" * 300):
        with pytest.raises(UserError, match="cannot be a folder name"):
            validate.folder_name(bad, "study name")


def test_config_keys_of_registry_objects_are_checked_with_a_suggestion() -> None:
    from diffatlas.config import load_config

    with pytest.raises(UserError, match=r"unknown key network\.dropuot \(did you mean 'dropout'\?\)"):
        load_config(None, ["network.dropuot=0.1"])
    with pytest.raises(UserError, match=r"unknown key data\.resolutoin \(did you mean 'resolution'\?\)"):
        load_config(None, ["data.resolutoin=16"])
    cfg = load_config(None, ["network.dropout=0", "data.name=toy2d", "network.preset=mlp-xs", "data.n=100"])
    assert cfg.network.options == {"dropout": 0} and cfg.data.options == {"n": 100}  # kept as given: same run ids
    assert json.loads(json.dumps(cfg.network.options)) == {"dropout": 0}


def _build_slowly(final: str, log: str) -> None:
    import time

    from diffatlas.io import build_once

    with build_once(final, ready="done") as tmp:
        if tmp is not None:
            with open(log, "a") as f:
                f.write("built\n")
            time.sleep(0.5)
            (tmp / "done").write_text("ok")


def test_build_once_builds_a_cached_folder_once_across_processes(tmp_path):
    """Workers that need the same cached folder at once (a dataset's evaluation classifier) build it
    once: the others wait for the lock and find it complete; nothing temporary is left."""
    import multiprocessing as mp

    final, log = tmp_path / "cache" / "thing", tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build_slowly, args=(str(final), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text() == "built\n" and (final / "done").read_text() == "ok"
    assert sorted(x.name for x in final.parent.iterdir() if not x.name.endswith(".lock")) == ["thing"]
    _build_slowly(str(final), str(log))  # already there: not built again
    assert log.read_text() == "built\n"
