"""The contract package (``results``) and the structure its imports draw: torch-free, one registry
of model kinds, the folder's encodings beside their parsers, and no import circle anywhere."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from results import kinds, layout, records, vocabulary
from results.errors import ConfigError, UserError
from results.store import Store

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("results", "models", "attacks", "sweep", "analysis")


def test_the_contract_imports_no_torch_ray_mlflow_or_sibling_packages():
    code = ("import sys, json\n"
            "import results, results.errors, results.schema, results.layout, results.records, "
            "results.store, results.kinds, results.vocabulary\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'ray', 'mlflow', 'models', 'attacks', 'sweep', 'analysis')]\n"
            "print(json.dumps(bad))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_the_built_in_kinds_and_their_rules():
    assert kinds.names()[:4] == ("vae", "tcvae", "tcdlgm", "seatbelt")
    vae, tcvae, tcdlgm, seatbelt = (kinds.get(n) for n in ("vae", "tcvae", "tcdlgm", "seatbelt"))
    assert vae.accepts(1.0, 1) and not vae.accepts(4.0, 1) and not vae.accepts(1.0, 2)
    assert tcvae.accepts(4.0, 1) and not tcvae.accepts(4.0, 2)
    assert tcdlgm.accepts(4.0, 5) and not tcdlgm.accepts(4.0, 1)
    assert vae.needs() == "it needs beta = 1 and layers = 1" and tcdlgm.needs() == "it needs layers >= 2"
    assert seatbelt.attack_layers(3) == [0, 1, 2] and tcdlgm.attack_layers(3) == [0]
    assert [kinds.varies_in_layers(n) for n in ("vae", "tcvae", "tcdlgm", "seatbelt")] == [False, False, True, True]
    assert kinds.label("seatbelt") == "Seatbelt-VAE" and kinds.colour("vae") == "#7f7f7f"


def test_registering_a_kind(monkeypatch):
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))  # leave the process's registry alone
    spec = kinds.KindSpec("mine", "Mine", min_layers=2, max_layers=3, attacked_layers=kinds.all_layers)
    assert kinds.register(spec) is spec and kinds.register(spec) is spec  # again: a no-op
    assert kinds.names()[-1] == "mine" and kinds.get("mine").layer_rule() == "2 <= layers <= 3"
    assert spec.attack_layers(3) == [0, 1, 2] and list(spec.decoded_layers(3)) == [0]
    with pytest.raises(ConfigError, match="registered already"):
        kinds.register(kinds.KindSpec("mine", "Another"))
    with pytest.raises(ConfigError, match="lower-case"):
        kinds.KindSpec("My-Kind", "x")
    with pytest.raises(ConfigError, match="not a registered model kind.*plugins") as info:
        kinds.get("factorvae")
    assert isinstance(info.value, UserError)
    # a kind this process does not know is shown by its name in the default colour
    assert kinds.label("factorvae") == "factorvae" and kinds.colour("factorvae") == kinds.DEFAULT_COLOUR
    assert kinds.sort_key("factorvae") > kinds.sort_key("mine")


def test_the_attack_vocabulary():
    assert vocabulary.MODES == ("latent", "output") and vocabulary.OUTPUT_SIMILARITIES == ("elbo",)
    assert vocabulary.DEFAULT_SIMILARITY == {"latent": "kl", "output": "elbo"}
    assert vocabulary.similarity_names()[:5] == ("kl", "l2_mean", "l2_sample", "w2", "elbo")
    assert [vocabulary.unit_of(s) for s in ("kl", "elbo", "l2_mean", "l2_sample", "w2")] == [
        "nats", "nats", "latent L2 distance", "latent L2 distance", "latent W2 distance"]
    assert vocabulary.mode_of_similarity("w2") == "latent" and vocabulary.mode_of_similarity("elbo") == "output"
    # an unknown similarity: a UserError the CLIs print, and a KeyError a tolerant reader catches
    for call in (vocabulary.unit_of, vocabulary.mode_of_similarity):
        with pytest.raises(ConfigError, match="'l1_mean' has no registered unit.*plugins") as info:
            call("l1_mean")
        assert isinstance(info.value, KeyError) and str(info.value).startswith("similarity 'l1_mean'")


def test_registering_a_similarity_unit(monkeypatch):
    monkeypatch.setattr(vocabulary, "_UNITS", dict(vocabulary._UNITS))  # leave the process's registry alone
    vocabulary.register_similarity_unit("l1_mean", "latent L1 distance")
    assert vocabulary.unit_of("l1_mean") == "latent L1 distance" and vocabulary.similarity_names()[-1] == "l1_mean"
    assert vocabulary.mode_of_similarity("l1_mean") == "latent"
    with pytest.raises(ConfigError, match="lower-case letters, digits and _"):
        vocabulary.register_similarity_unit("L1-mean", "x")  # it would not survive the attack file's name
    with pytest.raises(ConfigError, match="unit must be a non-empty string"):
        vocabulary.register_similarity_unit("l1_max", " ")


def test_trial_ids_and_attack_files_round_trip():
    assert layout.trial_id("dsprites", "seatbelt", 2.5, 3, 10, 0) == "dsprites-seatbelt-b2p5-L3-z10-s0"
    relpath = layout.attack_file("dsprites-vae-b1-L1-z10-s0", "latent", "l2_mean", 3, 12)
    assert relpath == "attacks/dsprites-vae-b1-L1-z10-s0/latent-l2_mean-p003-012.parquet"
    assert layout.parse_attack_file(relpath) == ("dsprites-vae-b1-L1-z10-s0", "latent", "l2_mean", 3, 12)
    assert layout.gallery_file(relpath).startswith("gallery/dsprites-vae-b1-L1-z10-s0/")
    assert layout.parse_attack_file("attacks/t/notes.parquet") is None


def test_sweep_json_and_the_tracking_uri_rule(tmp_path):
    store = Store(tmp_path / "out")
    grid = records.GridConfig(models=["vae"], betas=[1.0], layers=[1])
    records.write_sweep(store, {"name": "x", "grid": grid.__dict__, "train": {"steps": 3}}, "abc")
    config, fingerprint = records.read_sweep(store)
    assert fingerprint == "abc" and config["train"] == {"steps": 3}
    assert records.grid_of(config) == grid and records.grid_of({"grid": {"model": ["vae"]}}) is None
    with pytest.raises(ValueError, match="grid"):
        records.sweep_record({"name": "x", "grid": {"model": ["vae"]}}, "abc")
    assert records.read_tracking(store) == {}
    records.write_tracking(store, {"tracking_uri": "sqlite:///a.db", "parent_run_id": "p"})
    stored = records.read_tracking(store)
    assert records.tracking_uri("http://given", stored) == "http://given"
    assert records.tracking_uri(None, stored) == "sqlite:///a.db"
    assert records.tracking_uri(None, {}) is None  # MLflow's own default


def test_a_store_opened_to_read_creates_nothing(tmp_path):
    store = Store(tmp_path / "absent", create=False)
    assert not store.exists() and not (tmp_path / "absent").exists()
    written = Store(tmp_path / "there")
    written.write_json("a/b.json", {"k": 1})
    sub = written.sub("a")
    assert sub.read_json("b.json") == {"k": 1} and sub.uri == f"{written.uri}/a"
    assert sub.list_files("") == ["b.json"] and written.is_dir("a") and not written.is_dir("a/b.json")


# --- the structure the imports draw ----------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports, anywhere in it (late and TYPE_CHECKING imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def test_no_import_circles():
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    circles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert not circles, f"import circles: {circles}"


# --- the attack words have one home ----------------------------------------------------------

LITERAL_PACKAGES = ("results", "models", "attacks", "analysis", "sweep", "benchmarks")
ATTACK_WORDS = {vocabulary.LATENT, vocabulary.OUTPUT, vocabulary.KL, vocabulary.L2_MEAN,
                vocabulary.L2_SAMPLE, vocabulary.W2, vocabulary.ELBO}


def _exempt_strings(tree: ast.AST) -> set[int]:
    """The string nodes that are not code naming a word: docstrings (prose), and the entries of
    ``__all__``, which are Python names (``attacks.objectives`` exports functions called
    ``l2_mean`` and ``w2``)."""
    exempt = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            exempt.add(id(body[0].value))
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
            exempt.update(id(n) for n in ast.walk(node.value) if isinstance(n, ast.Constant))
    return exempt


def test_no_mode_or_similarity_literal_outside_the_vocabulary():
    """A mode or similarity spelled as a string (f-string pieces included) anywhere but
    results/vocabulary.py fails here, with its file and line: import the constant instead.
    The held-out ELBO, a train/ column of the same word, has no exemption either: code names it
    ``results.schema.TRAIN_ELBO``. Tests may spell the words (they check the values)."""
    home = REPO / "results" / "vocabulary.py"
    found = []
    for package in LITERAL_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path == home:
                continue
            tree = ast.parse(path.read_text(), str(path))
            exempt = _exempt_strings(tree)
            lines = sorted((node.lineno, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
                           and node.value in ATTACK_WORDS and id(node) not in exempt)
            found += [f"{path.relative_to(REPO)}:{line}: {word!r}" for line, word in lines]
    assert not found, ("mode or similarity literals outside results/vocabulary.py (use its constants, "
                       "or results.schema.TRAIN_ELBO for the held-out ELBO column):\n" + "\n".join(found))


def test_sweep_json_carries_similarity_units_for_an_analysis_without_the_plugin(tmp_path, monkeypatch):
    """The sweep records each similarity's unit in sweep.json; the analysis, which never imports
    a plugin (it would pull in torch), registers the ones it does not know from there, and
    reading the config back for a resume ignores them."""
    from analysis.load import read_sweep_config
    from results import records, vocabulary
    from results.store import Store

    monkeypatch.setattr(vocabulary, "_UNITS", dict(vocabulary._UNITS))   # forget it afterwards
    config = {"name": "s", "grid": dataclasses.asdict(records.GridConfig())}
    store = Store(str(tmp_path))
    records.write_sweep(store, config, "f" * 16, {"kl": "nats", "plugin_sim": "pixel L1 distance"})
    with pytest.raises(vocabulary.UnknownSimilarity):
        vocabulary.unit_of("plugin_sim")
    read_sweep_config(str(tmp_path))
    assert vocabulary.unit_of("plugin_sim") == "pixel L1 distance" and vocabulary.unit_of("kl") == "nats"
    assert records.read_sweep(store) == (config, "f" * 16)
