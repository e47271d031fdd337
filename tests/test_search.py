"""``ts.search`` / ``torchslim search``: plans under a budget, resumption, workers, impossible budgets, replay.

Every search here runs on LeNet-300-100 trained on the 8x8 digits (a few seconds), so the
searches are small but real: real pruning, quantization, healing and measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from safetensors.torch import save_file

from torchslim.data import load_data
from torchslim.recipe import load_recipe
from torchslim.search.api import search
from torchslim.search.outcome import pareto
from torchslim.search.plan import allocate
from torchslim.search.result import SensitivityResult
from torchslim.search.searchconfig import SearchConfig
from torchslim.train import finetune
from torchslim.zoo import create_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"sensitivity": {"batches": 1, "batch_size": 256}, "val_samples": 300,
         "heal": {"epochs": [0, 1], "max_steps": 20, "methods": ["finetune"]}}


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> dict:
    """A recipe head naming LeNet-300-100 trained on digits (weights in a safetensors file)."""
    torch.manual_seed(0)
    data = load_data("digits")
    model = create_model("lenet300", in_features=64)
    finetune(model, data, {"epochs": 6, "lr": 0.1, "batch_size": 64, "schedule": "cosine"}, progress=False)
    path = tmp_path_factory.mktemp("weights") / "lenet300.safetensors"
    save_file(model.state_dict(), str(path))
    return {"name": "digits-search", "seed": 0, "model": {"name": "zoo:lenet300", "args": {"in_features": 64},
                                                          "weights": str(path)}, "data": "digits"}


@pytest.fixture(scope="module")
def bn_head(tmp_path_factory) -> dict:
    """A ResNet-8 (BatchNorm everywhere: a stage that runs it in the wrong mode would change its statistics)."""
    torch.manual_seed(0)
    data = load_data("digits")
    model = create_model("resnet_cifar", depth=8, in_channels=1, num_classes=10)
    finetune(model, data, {"epochs": 6, "lr": 0.05, "batch_size": 64, "schedule": "cosine"}, progress=False)
    path = tmp_path_factory.mktemp("weights") / "resnet8.safetensors"
    save_file(model.state_dict(), str(path))
    return {"name": "digits-search-bn", "seed": 0, "data": "digits",
            "model": {"name": "zoo:resnet_cifar", "args": {"depth": 8}, "weights": str(path)}}


def test_bytes_search_beats_the_unchanged_model_within_budget_and_its_recipe_replays(bn_head, tmp_path):
    cfg = {**SMALL, "objective": "bytes", "budget": 1.0, "trials": 6, "proposals": 3,
           "families": ["structured", "unstructured", "bits", "heal"]}
    result = search(bn_head, cfg, out=tmp_path, progress=False)
    chosen = result["chosen"]
    assert chosen is not None and chosen["drop"] <= 1.0
    base = result["baseline"]["objective"]
    assert chosen["objective"] < base / 4, (chosen, base)  # weight bits + sparsity: far smaller than fp32
    # every trial the study finished is accounted for (6 scored, plus any pruned before healing), the front is
    # non-dominated
    assert sum(r["status"] != "pruned" for r in result["trials"]) == 6
    assert len(result["trials"]) <= 6 + 3 * 6
    front = pareto(result["trials"])
    for r in front:
        assert not any(o["objective"] <= r["objective"] and o["drop"] < r["drop"] for o in result["trials"]
                       if o.get("status") == "ok" and o is not r)
    # each family alone was searched at the same budget, and the combination is no worse than the best of them
    alone = [r for r in result["alone"].values() if r]
    assert alone and chosen["objective"] <= min(r["objective"] for r in alone)  # never worse than a family alone
    # the recipe is a recipe torchslim run replays to the same figures
    recipe = load_recipe(tmp_path / "chosen.yaml")
    assert [s.type for s in recipe.stages] == [s["type"] for s in chosen["stages"]]
    replay = result["replay"]
    assert abs(replay["val_accuracy"] - chosen["accuracy"]) <= 0.001
    assert replay["objective"] == chosen["objective"]  # the same .tslim bytes
    assert replay["test_accuracy"] is not None
    for name in ("search.json", "pareto.md", "pareto.png", "sensitivity.json", "study.db"):
        assert (tmp_path / name).exists(), name
    assert "Pareto front" in (tmp_path / "pareto.md").read_text()


def test_an_impossible_budget_returns_the_closest_plans_with_their_misses(head, tmp_path):
    cfg = {**SMALL, "objective": "bytes", "budget": 0.0, "min_ratio": 1000.0, "trials": 3, "proposals": 2,
           "families": ["bits"], "singles": False, "replay": False}
    result = search(head, cfg, out=tmp_path, progress=False)
    assert result["chosen"] is None
    closest = result["closest"]
    assert closest and all(r["miss_ratio"] > 1.0 for r in closest)
    assert closest == sorted(closest, key=lambda r: (r["miss_pt"] + 100 * (r["miss_ratio"] - 1), r["objective"]))
    assert (tmp_path / "closest.yaml").exists() and not (tmp_path / "chosen.yaml").exists()
    assert "No plan meets the budget" in (tmp_path / "pareto.md").read_text()


_KILLABLE = """
import sys, json
from torchslim.search.api import search
head, cfg, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
search(head, cfg, out=out, progress=False)
"""


def _finished(db: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    import sqlalchemy.exc

    try:
        s = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    except KeyError:  # the search has not created its study yet
        return []
    except sqlalchemy.exc.OperationalError:  # the search is creating the storage's tables this very moment
        return []
    return [t for t in s.get_trials(deepcopy=False) if t.state.is_finished()]


def test_a_killed_search_resumes_without_rerunning_finished_trials(head, tmp_path):
    cfg = {**SMALL, "objective": "macs", "trials": 5, "proposals": 0, "families": ["structured", "lowrank", "heal"],
           "singles": False, "replay": False, "heartbeat": 1}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, json.dumps(head), json.dumps(cfg), str(tmp_path)], env=env)
    db = tmp_path / "study.db"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if db.exists() and len(_finished(db, "torchslim-search")) >= 2:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    before = {t.number: (t.params, t.datetime_complete) for t in _finished(db, "torchslim-search")}
    assert 2 <= len(before) < 5, before
    time.sleep(3.5)  # the killed worker's running trial goes stale (3 heartbeats) and is failed, then retried
    result = search(head, cfg, out=tmp_path, progress=False)
    after = {t.number: (t.params, t.datetime_complete) for t in _finished(db, "torchslim-search")}
    for number, (params, done) in before.items():
        assert after[number] == (params, done)  # not run again
    answered = [t for t in _finished(db, "torchslim-search") if t.state != optuna.trial.TrialState.FAIL
                or "reason" in t.user_attrs]  # a trial whose worker was killed does not count: it is run again
    assert len(answered) == 5
    assert all(r.get("reason") for r in result["trials"] if r["status"] == "failed")


def test_two_workers_share_one_study(head, tmp_path):
    cfg = {**SMALL, "objective": "macs", "trials": 4, "proposals": 0, "workers": 2, "families": ["structured"],
           "singles": False, "replay": False}
    result = search(head, cfg, out=tmp_path, progress=False)
    assert 4 <= len(result["trials"]) <= 5  # each worker stops once the study holds 4 finished trials
    assert result["chosen"] is not None


def test_allocation_spends_the_budget_where_it_costs_least(head, tmp_path):
    from torchslim.search.evaluate import Env
    from torchslim.search.sensitivity import sensitivity

    env = Env.build(head, SearchConfig.parse({"objective": "bytes", "val_samples": 300}))
    sens = sensitivity(env.model, env.data, {"analyses": ["bits"], "batches": 1, "batch_size": 300}, progress=False)
    analysis = sens.analysis("bits")
    chosen = allocate(analysis, sens.baseline.accuracy, 4.0 / 8.0, lambda u, s: u.params * s)
    params = {u.name: u.params for u in analysis.units}
    total = sum(params[n] * b for n, b in chosen.items())
    assert total <= 4.0 * sum(params.values())  # the average-bits budget holds
    assert set(chosen.values()) <= {8.0, 6.0, 4.0, 3.0, 2.0}
    assert SensitivityResult.from_dict(sens.to_dict()) == sens


def test_search_block_in_a_recipe_trains_then_searches(tmp_path):
    recipe = {"name": "digits-block", "model": {"name": "zoo:lenet300", "args": {"in_features": 64}}, "data": "digits",
              "output": str(tmp_path / "run"),
              "stages": [{"type": "train", "epochs": 4, "lr": 0.1, "batch_size": 64, "schedule": "cosine"}],
              "search": {**SMALL, "objective": "macs", "trials": 2, "proposals": 1, "families": ["structured"],
                         "singles": False, "replay": False, "budget": 100.0}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = subprocess.run([sys.executable, "-m", "torchslim.cli", "run", str(path)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "stage-01-train.safetensors").exists()
    assert json.loads((tmp_path / "run" / "search" / "search.json").read_text())["chosen"] is not None
    assert "Pareto front" in r.stdout


def test_config_errors_name_the_field():
    with pytest.raises(Exception, match="objective"):
        SearchConfig.parse({"objective": "speed"})
    with pytest.raises(Exception, match="bits"):
        SearchConfig.parse({"objective": "latency", "families": ["bits"]})
    with pytest.raises(Exception, match="epoch"):
        SearchConfig.parse({"heal": {"epochs": [-1]}})


def test_a_kmeans_plan_shares_then_heals_its_centroids(head, tmp_path):
    import copy

    from torchslim.search.evaluate import Env, _run, recipe_for, score
    from torchslim.search.plan import plan_stages

    fams = ["unstructured", "bits", "share", "heal"]
    cfg = SearchConfig.parse({"objective": "bytes", "val_samples": 300, "families": fams,
                              "heal": {"epochs": [4], "max_steps": 40, "methods": ["finetune"], "centroid_lr": 0.01}})
    plan = {"sparsity": 0.5, "bits": 2.0, "uniform": True, "quantizer": "kmeans", "heal_epochs": 4, "heal_method": "finetune"}
    stages = plan_stages(plan, cfg, None)
    assert [s["type"] for s in stages] == ["prune", "finetune", "share", "finetune", "encode"]
    assert stages[3]["lr"] == cfg.heal.centroid_lr and stages[2]["bits"] == 2
    env = Env.build(head, cfg)
    healed, unhealed = copy.deepcopy(env.model), copy.deepcopy(env.model)
    _run(env, recipe_for(head, stages), healed, tmp_path / "a", False)
    _run(env, recipe_for(head, stages[:3]), unhealed, tmp_path / "b", False)
    for name in ("fc1", "fc2", "fc3"):
        w, w0 = getattr(healed, name).weight, getattr(unhealed, name).weight
        assert torch.equal(w == 0, w0 == 0) and bool((w == 0).any())  # the pruned weights stay pruned
        centroids = w[w != 0].unique()
        assert len(centroids) <= 4 and not torch.equal(centroids, w0[w0 != 0].unique())  # 4 values, moved by healing
    kmeans, rtn = score(env, plan), score(env, {**plan, "quantizer": "rtn"})
    assert [s["type"] for s in rtn.stages] == ["prune", "finetune", "quantize", "encode"]
    assert kmeans.drop <= 3.0, kmeans.drop
    assert kmeans.objective < 0.8 * rtn.objective, (kmeans.objective, rtn.objective)  # 4 shared values, no scales


def test_each_family_alone_finds_its_strongest_setting_within_the_budget_by_bisection(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torchslim.search.singles as singles

    cfg = SearchConfig.parse({"objective": "bytes", "families": ["unstructured", "bits", "heal"], "budget": 1.0})
    drops = {0.5: 0.1, 0.7: 0.4, 0.8: 0.9, 0.9: 2.0, 0.95: 5.0, 8.0: 0.0, 6.0: 0.2, 5.0: 0.5, 4.0: 1.5, 3.0: 4.0, 2.0: 9.0}
    scored = []

    def fake(env, family, plan):
        key = plan.get("sparsity", plan.get("bits"))
        scored.append((family, key))
        return {"family": family, "plan": plan, "summary": str(key), "status": "ok", "drop": drops[key],
                "objective": 100.0 - key if family == "unstructured" else key}

    monkeypatch.setattr(singles, "_score_row", fake)
    env = SimpleNamespace(cfg=cfg)
    url = f"sqlite:///{tmp_path / 's.db'}"
    rows = singles.run_singles(env, url)
    best = {f: singles.best_single([r for r in rows if r["family"] == f], 1.0)["plan"] for f in ("unstructured", "bits")}
    assert best["unstructured"]["sparsity"] == 0.8 and best["bits"]["bits"] == 5.0
    assert scored == [("unstructured", 0.8), ("unstructured", 0.9), ("bits", 5.0), ("bits", 3.0), ("bits", 4.0)]
    scored.clear()
    assert singles.run_singles(env, url) == rows and not scored  # a restart scores nothing again


def test_proposals_from_singles_combine_the_families_at_fractions_of_their_healed_limits(head, tmp_path):
    from torchslim.search.propose import proposals_from_singles

    cfg = {**SMALL, "objective": "bytes", "budget": 2.0, "trials": 2, "proposals": 2, "proposals_from": "singles",
           "families": ["unstructured", "share", "heal"], "heal": {**SMALL["heal"], "epochs": [1]}, "replay": False}
    result = search(head, cfg, out=tmp_path, progress=False)
    alone = result["alone"]
    assert alone["unstructured"] is not None and alone["share"] is not None
    expected = proposals_from_singles(result["singles"], SearchConfig.parse(cfg))
    first = sorted(result["trials"], key=lambda r: r["number"])[:2]
    assert [r["plan"] for r in first] == expected  # the study's first trials are these proposals
    for p in expected:  # each a fraction of both families' limits, neither unchanged
        assert 0 < p["sparsity"] <= alone["unstructured"]["plan"]["sparsity"] and p["quantizer"] == "kmeans"
        assert alone["share"]["plan"]["bits"] <= p["bits"] < 8.0
    with pytest.raises(Exception, match="proposals_from"):
        SearchConfig.parse({"proposals_from": "singles", "singles": False})


def test_proposals_are_queued_once_and_new_ones_join_a_continued_study(tmp_path):
    from torchslim.search.study import enqueue_proposals, open_study

    cfg = SearchConfig.parse({"objective": "macs", "families": ["structured", "heal"]})
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = [{"channels": 0.5, "heal_epochs": 1, "heal_method": "finetune"},
             {"channels": 0.7, "heal_epochs": 1, "heal_method": "finetune"}]
    assert enqueue_proposals(open_study(cfg, url), first) == 2
    assert enqueue_proposals(open_study(cfg, url), first) == 0  # a restart queues none twice
    more = [first[1], {"channels": 0.6, "heal_epochs": 1, "heal_method": "finetune"}]
    assert enqueue_proposals(open_study(cfg, url), more) == 1
    assert len(open_study(cfg, url).get_trials(deepcopy=False)) == 3


def test_the_last_trials_refine_the_best_plan_through_its_stronger_neighbours(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torchslim.search.study as study_mod
    from torchslim.search.evaluate import Score

    def fake(env, plan):  # bytes fall and the drop rises as either family is pushed further
        drop = 2.0 * plan["sparsity"] + 0.1 * (8.0 - plan["bits"])
        return Score(accuracy=0.9, drop=drop, objective=(1.0 - plan["sparsity"]) * plan["bits"], seconds=0.0)

    monkeypatch.setattr(study_mod, "score", fake)
    start = {"sparsity": 0.2, "bits": 6.0}

    def plans_run(refine: int, name: str) -> list[dict]:
        cfg = SearchConfig.parse({"objective": "bytes", "families": ["unstructured", "bits"], "budget": 1.0,
                                  "trials": 5, "refine_trials": refine, "study": name})
        study = study_mod.open_study(cfg, f"sqlite:///{tmp_path / 's.db'}")
        study_mod.enqueue_proposals(study, [start])
        study_mod.run_study(SimpleNamespace(cfg=cfg, baseline=None), study)
        return [t.params for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
                if t.state == TrialState.COMPLETE]

    # the start spends 0.6 pt of 1.0: its two neighbours run; the better of them (0.2 at 5.5 bits: 4.4 at 0.65 pt)
    # is then refined in turn (0.25 at 5.5 bits was not tried yet, 0.2 at 5 bits)
    assert plans_run(4, "refine") == [start, {"sparsity": 0.25, "bits": 6.0}, {"sparsity": 0.2, "bits": 5.5},
                                      {"sparsity": 0.25, "bits": 5.5}, {"sparsity": 0.2, "bits": 5.0}]
    assert study_mod.stronger_neighbours({"sparsity": 0.95, "bits": 2.0, "channels": 1.0}) == []  # ends of range
    plain = plans_run(0, "plain")  # the sampler alone
    assert plain[0] == start and {"sparsity": 0.25, "bits": 6.0} not in plain[1:3]


def test_a_latency_search_prunes_channels_in_the_blocks_of_16_the_int8_kernels_run():
    from torchslim.prune.structured import prune_structured_
    from torchslim.search.plan import plan_stages
    from torchslim.zoo import create_model

    cfg = SearchConfig.parse({"objective": "latency", "families": ["structured", "int8"]})
    stage = plan_stages({"channels": 0.6}, cfg, None)[0]
    assert (stage["round_to"], stage["min_channels"], stage["macs_target"]) == (16, 16, 0.6)
    model = create_model("resnet_cifar", depth=20, in_channels=1)
    prune_structured_(model, {k: v for k, v in stage.items() if k not in ("type", "name")},
                      example_input=torch.randn(1, 1, 28, 28))
    widths = {m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths and all(w % 16 == 0 for w in widths) and min(widths) == 16 and widths != {16, 32, 64}
    bytes_cfg = SearchConfig.parse({"objective": "bytes", "channel_multiple": 4})
    assert plan_stages({"channels": 0.6}, bytes_cfg, None)[0]["round_to"] == 4


def test_the_one_shot_check_judges_a_pruned_model_after_recalibrating_its_batchnorms(bn_head):
    """Channels pruned to 0.4 of the MACs leave ResNet-8 near chance with its old BatchNorm statistics (a drop of
    ~85 pt) but ~25 pt from its baseline once they are re-estimated; healing recovers it. The check stops the plan
    only on the second figure, and the plan's own model is not recalibrated (the replay must run the same)."""
    import copy

    from torchslim.search.evaluate import Env, Hopeless, _accuracy, _run, recipe_for, score
    from torchslim.search.plan import plan_stages

    cfg = SearchConfig.parse({**SMALL, "objective": "macs", "max_one_shot_drop": 50.0})
    env = Env.build(bn_head, cfg)
    plan = {"channels": 0.4, "heal_epochs": 1, "heal_method": "finetune"}
    structural = [s for s in plan_stages(plan, cfg, None) if s["type"] == "prune"]
    pruned = copy.deepcopy(env.model)
    _run(env, recipe_for(bn_head, structural), pruned, Path("unused"), check=False)
    raw = 100 * (env.baseline.accuracy - _accuracy(env, pruned))
    assert raw > 60.0, raw  # as pruned: hopeless by the plain measure
    healed = score(env, plan)  # not Hopeless: judged after recalibration
    assert healed.drop < raw - 30.0, (healed.drop, raw)
    strict = Env.build(bn_head, SearchConfig.parse({**SMALL, "objective": "macs", "max_one_shot_drop": 10.0}))
    with pytest.raises(Hopeless, match="before healing"):
        score(strict, plan)


def test_latency_search_on_a_hugging_face_bert_classifier_removes_layers_and_quantizes(tmp_path, monkeypatch):
    """A BERT layer takes the attention mask and more as arguments: a removed one must still accept them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _hf import SPAM, reviews, tiny_bert  # the tiny BERT classifiers' one builder

    from torchslim.pipeline import run_recipe
    from torchslim.recipe import parse_recipe

    monkeypatch.chdir(tmp_path)
    tiny_bert(tmp_path, size=SPAM)  # two layers
    reviews(tmp_path / "reviews.csv", 240)
    data = {"csv": "reviews.csv", "max_length": 16, "val_size": 48}
    trained = run_recipe(parse_recipe({"name": "bert", "model": {"hf": "tiny-bert"}, "data": data, "stages": [
        {"type": "train", "epochs": 6, "lr": 0.01, "optimizer": "adam", "batch_size": 16}]}), output=tmp_path / "t", progress=False)
    trained.model.save_pretrained(tmp_path / "trained")
    trained.source.tokenizer.save_pretrained(tmp_path / "trained")
    head = {"name": "bert-search", "seed": 0, "model": {"hf": "trained"}, "data": data}
    with pytest.raises(Exception, match="data.val_size"):  # the budget is judged on a validation split
        search({**head, "data": {k: v for k, v in data.items() if k != "val_size"}}, {"objective": "latency"},
               out=tmp_path / "refused", progress=False)
    cfg = {"objective": "latency", "budget": 5.0, "families": ["blocks", "int8", "heal"], "trials": 2, "proposals": 1,
           "val_samples": 48, "sensitivity": {"batches": 1, "batch_size": 48, "analyses": ["structured"]},
           "heal": {"epochs": [1], "max_steps": 6, "methods": ["finetune"]}, "latency": {"batch": 8, "threads": 1, "runs": 3}}
    result = search(head, cfg, out=tmp_path / "s", progress=False)
    rows = result["trials"] + result["singles"]
    assert [r for r in rows if r["status"] != "ok"] == []  # nothing refused or crashed
    removed = [r for r in result["singles"] if r["family"] == "blocks" and r["plan"]["blocks"] >= 0.45]
    assert removed and removed[0]["drop"] < 50  # one of the two layers gone, and the classifier still classifies
    assert result["chosen"] is not None and result["replay"]["objective"] is not None


def test_a_drop_of_exactly_the_budget_fits_it_also_when_read_back_from_a_stored_study():
    """491/500 - 486/500 is five validation samples, exactly 1.0 pt; float subtraction made it 1.0000000000000009."""
    from torchslim.search.evaluate import accuracy_drop_pt
    from torchslim.search.outcome import choose, trial_rows

    assert 100 * (0.982 - 0.972) > 1.0  # the floating-point drop that turned a plan at the budget away
    assert accuracy_drop_pt(0.982, 0.972) == 1.0
    grid = {"channels": optuna.distributions.FloatDistribution(0.25, 1.0, step=0.05),
            "blocks": optuna.distributions.FloatDistribution(0.0, 0.45, step=0.05)}
    stored = [optuna.trial.create_trial(state=TrialState.COMPLETE, values=[objective, drop], distributions=grid,
                                        params={"channels": channels, "blocks": 0.15},
                                        user_attrs={"plan": {}, "drop": drop, "objective": objective, "accuracy": 0.972})
              for objective, drop, channels in ((40.9, 100 * (0.982 - 0.972), 0.45), (55.1, 0.8, 0.8))]
    chosen, misses = choose(trial_rows(stored), budget=1.0, baseline=172.0)
    assert chosen is not None and chosen["objective"] == 40.9 and chosen["drop"] == 1.0 and misses == []

    from torchslim.search.singles import _done
    from torchslim.search.study import refine_best

    singles = optuna.create_study(directions=["minimize", "minimize"])
    singles.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[40.9, 1.0], params={}, distributions={},
                                                user_attrs={"index": 3, "row": {"status": "ok", "drop": 100 * (0.982 - 0.972)}}))
    assert _done(singles)[3]["drop"] == 1.0  # a family-alone point read back: within the budget
    study = optuna.create_study(directions=["minimize", "minimize"])
    for t in stored:
        study.add_trial(t)
    # the best plan within the budget is the one at exactly 1.0 pt: it leaves nothing unspent, so no neighbour is
    # queued (read as 1.0000000000000009 it was over the budget, and the 0.8 pt plan's neighbours were queued instead)
    assert refine_best(study, SearchConfig.parse({"budget": 1.0, "trials": 2, "refine_trials": 1})) == 0


def test_healing_can_use_adamw_and_the_default_stages_stay_as_they_were(head):
    from torchslim.search.evaluate import Env, score
    from torchslim.search.plan import plan_stages

    plan = {"channels": 0.25, "heal_epochs": 1, "heal_method": "finetune"}
    sgd = plan_stages(plan, SearchConfig.parse({**SMALL, "objective": "macs"}), None)[-1]
    assert sgd == {"type": "finetune", "name": "heal", "epochs": 1, "lr": 0.01, "batch_size": 128, "schedule": "cosine",
                   "nesterov": True, "weight_decay": 5e-4, "max_steps": 20}  # the stages searches recorded before the option
    cfg = SearchConfig.parse({**SMALL, "objective": "macs", "heal": {**SMALL["heal"], "epochs": [1], "max_steps": 40,
                                                                      "optimizer": "adamw", "lr": 0.003}})
    adamw = plan_stages(plan, cfg, None)[-1]
    assert adamw["optimizer"] == "adamw" and adamw["weight_decay"] == 0.01 and "nesterov" not in adamw
    env = Env.build(head, cfg)
    healed, unhealed = score(env, plan), score(env, {**plan, "heal_epochs": 0})
    # LeNet-300 at a quarter of its MACs: 3.5 pt lost as pruned, 0.7 pt after 40 AdamW steps
    assert healed.stages[-1]["optimizer"] == "adamw" and healed.drop <= unhealed.drop - 2.0, (healed.drop, unhealed.drop)
    with pytest.raises(Exception, match="optimizer"):
        SearchConfig.parse({"heal": {"optimizer": "lion"}})
