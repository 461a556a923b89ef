"""Exports carry a Hub model card (README.md) that ``huggingface_hub.ModelCard.load`` parses; ``--push-to-hub``
uploads through huggingface_hub (mocked at the ``HfApi`` boundary: no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from pancapchain.cli import main as cli_main
from pancapchain.model.export import export_checkpoint
from pancapchain.model.model_card import CardOptions, build_model_card, hub_id

F1 = {"tag": 50.0, "loc": 20.5, "attr": 30.25, "rel": 10.0, "global": 70.0}


def _eval_dir(root: Path, pancapscore: float = 117.75) -> Path:
    """An eval output folder as `pancapchain eval` writes it (only the keys the card reads matter)."""
    root.mkdir(parents=True, exist_ok=True)
    scores = {d: {"precision": f, "recall": f, "f1": f} for d, f in F1.items()}
    (root / "metrics.json").write_text(json.dumps(
        {"mode": "offline", "n_images": 3, "pancapscore": pancapscore, "scores": scores, "notes": []}))
    return root


def _checkpoint_copy(tiny_checkpoint: Path, dst: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, dst, ignore=shutil.ignore_patterns("checkpoint-*")))


def test_card_metadata_and_results_parse_with_modelcard_load(tiny_checkpoint, tmp_path, one_thread):
    evals = _eval_dir(tmp_path / "eval-val")
    card = CardOptions("llava-hf/llava-1.5-7b-hf", ["someone/sa-pancap"], [f"sa-pancap-val={evals}"], "apache-2.0")
    out = tmp_path / "export"
    export_checkpoint(tiny_checkpoint, out, dtype="fp32", echo=lambda _: None, card=card)
    loaded = ModelCard.load(out / "README.md")
    data = loaded.data
    assert (data.library_name, data.pipeline_tag) == ("transformers", "image-text-to-text")
    assert data.base_model == "llava-hf/llava-1.5-7b-hf" and data.datasets == ["someone/sa-pancap"]
    assert data.license == "apache-2.0" and data.model_name == "export"
    assert {"pancapchain", "panoptic-captioning", "llava", "lora"} <= set(data.tags)
    results = {r.metric_type: r for r in data.eval_results}
    assert results["pancapscore"].metric_value == 117.75 and results["f1_attr"].metric_value == 30.25
    assert set(results) == {"pancapscore", "f1_tag", "f1_loc", "f1_attr", "f1_rel", "f1_global"}
    assert {r.dataset_name for r in data.eval_results} == {"sa-pancap-val"}
    assert all(r.task_type == "image-text-to-text" for r in data.eval_results)
    assert "PancapScore **117.75**" in loaded.text and "| 50.00 | 20.50 | 30.25 | 10.00 | 70.00 |" in loaded.text
    assert "model-index" in (out / "README.md").read_text()


def test_local_base_and_data_stay_out_of_the_metadata_and_run_eval_is_found(tiny_checkpoint, tmp_path, one_thread):
    checkpoint = _checkpoint_copy(tiny_checkpoint, tmp_path / "run")
    _eval_dir(checkpoint / "eval", pancapscore=42.5)  # where scripts/demo.sh writes it
    metrics = json.loads((checkpoint / "metrics.json").read_text())  # the run's training summary
    (checkpoint / "metrics.json").write_text(json.dumps({**metrics, "eval_loss_start": 7.5, "eval_loss_end": 1.25}))
    out = tmp_path / "export"
    export_checkpoint(checkpoint, out, dtype="fp32", echo=lambda _: None)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and card.data.datasets is None  # "tiny" and local JSONL are not Hub ids
    assert "`tiny` (a local model, not on the Hub)" in card.text
    assert [r.metric_value for r in card.data.eval_results if r.metric_type == "pancapscore"] == [42.5]
    assert "eval loss 7.5 -> 1.25" in card.text


def test_hub_id_accepts_repo_ids_only(tmp_path):
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    assert hub_id("llava-hf/llava-1.5-13b-hf") == "llava-hf/llava-1.5-13b-hf"
    assert hub_id("tiny") is None and hub_id("/models/llava") is None and hub_id(None) is None
    assert hub_id(str(tmp_path / "org" / "model")) is None


def test_bad_eval_stops_the_export_before_anything_is_written(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    code = cli_main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--eval", str(tmp_path / "nope")])
    assert code == 2 and not out.exists()
    assert "--eval" in capsys.readouterr().err


@pytest.fixture
def hub_calls(monkeypatch):
    """HfApi.create_repo / upload_folder replaced by recorders (what the folder held at upload time)."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        calls.append(("upload_folder", repo_id, {**kwargs, "folder_path": folder_path, "files": files}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_finished_export(tiny_checkpoint, tmp_path, hub_calls, capsys, one_thread):
    out = tmp_path / "export"
    code = cli_main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--dtype", "fp32",
                     "--push-to-hub", "me/pancap-tiny", "--private"])
    assert code == 0, capsys.readouterr().err
    (create, repo, create_kwargs), (upload, repo2, upload_kwargs) = hub_calls
    assert (create, repo, upload, repo2) == ("create_repo", "me/pancap-tiny", "upload_folder", "me/pancap-tiny")
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert upload_kwargs["repo_type"] == "model" and Path(upload_kwargs["folder_path"]) == out
    assert {"README.md", "model.safetensors", "pancap_meta.json", "config.json"} <= set(upload_kwargs["files"])
    assert "commit/abc123" in capsys.readouterr().out


def test_failed_upload_keeps_the_export_and_says_how_to_retry(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def refuse(self, repo_id, **kwargs):
        request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
        raise HfHubHTTPError("401 Unauthorized", response=httpx2.Response(401, request=request))

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    out = tmp_path / "export"
    code = cli_main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--dtype", "fp32",
                     "--push-to-hub", "me/pancap-tiny"])
    err = capsys.readouterr().err
    assert code == 2 and (out / "README.md").is_file()
    assert "upload to me/pancap-tiny failed: HfHubHTTPError: 401 Unauthorized" in err
    assert f"hf upload me/pancap-tiny {out}" in err


def test_a_model_trained_with_box_features_says_how_to_attach_them():
    with_hooks = build_model_card({"box_features": True}, [], "tiny").text
    assert "attach_box_features(model, processor.tokenizer, enabled=True)" in with_hooks
    with_span = build_model_card({"box_features": True, "box_feature_span": 2}, [], "tiny").text
    assert "attach_box_features(model, processor.tokenizer, enabled=True, span=2)" in with_span
    assert "box features" not in build_model_card({"box_features": False}, [], "tiny").text
