"""LLM-judge back-end: a local Hugging Face causal LM (greedy, batched) and a per-image response cache.

``HFJudge`` loads ``AutoTokenizer`` + ``AutoModelForCausalLM`` from a local folder only
(``local_files_only=True``, ``trust_remote_code=False``) on first use, left-pads batches, applies the
tokenizer's chat template when it has one (system + user turn, generation prompt added) and decodes
greedily (``do_sample=False``, no repetition penalty), so a rerun reproduces its answers. The official
run samples with Qwen2.5's defaults (T 0.7, top-p 0.8, top-k 20, repetition penalty 1.05) and is not
reproducible; this is a deliberate difference.

``JudgeCache`` keeps one JSON file per image with the raw response of every step, keyed by a hash of
(prompt templates, judge identity, step, filled prompt); files are written atomically after each batch,
so an interrupted run resumes where it stopped and an edited prompt or another judge model is re-run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from pancapchain.data.io import atomic_write_json


@dataclass(frozen=True)
class JudgeRequest:
    """One LLM call: which image, which protocol step (e.g. "gt_content"), and the filled prompt."""

    image_id: str
    step: str
    prompt: str


class JudgeBackend(Protocol):
    name: str

    def generate(self, requests: list[JudgeRequest]) -> list[str]:
        """One response text per request, same order."""
        ...


class HFJudge:
    """Greedy, batched generation with a local HF causal LM."""

    def __init__(
        self,
        model_path: str | Path,
        system_prompt: str = "",
        batch_size: int = 4,
        max_new_tokens: int = 2048,
        device: str = "cpu",
        dtype: str = "auto",
    ):
        self.path = Path(model_path)
        self.name = f"hf:{self.path.resolve()}"
        self.system_prompt = system_prompt
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        if not self.path.is_dir():
            raise FileNotFoundError(f"judge model folder {self.path} does not exist (--judge hf:PATH takes a local folder)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True, trust_remote_code=False)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        model = AutoModelForCausalLM.from_pretrained(
            self.path, local_files_only=True, trust_remote_code=False, dtype=self.dtype
        )
        self._tokenizer, self._model = tok, model.to(self.device).eval()

    def chat_text(self, prompt: str) -> str:
        """The model input for one prompt: the chat template when the tokenizer has one, else plain text."""
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            try:
                return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:  # some templates refuse a system turn: fold it into the user turn
                merged = [{"role": "user", "content": f"{self.system_prompt}\n\n{prompt}".strip()}]
                return tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return f"{self.system_prompt}\n\n{prompt}\n".lstrip()

    def generate(self, requests: list[JudgeRequest]) -> list[str]:
        if not requests:
            return []
        if self._model is None:
            self._load()
        import torch
        from transformers import GenerationConfig

        tok, model = self._tokenizer, self._model
        texts = [self.chat_text(r.prompt) for r in requests]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        config = GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, num_beams=1,
        )
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            # a chat template already writes BOS and friends; plain prompts get the tokenizer's own
            enc = tok([texts[i] for i in chunk], return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=not getattr(tok, "chat_template", None))
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                generated = model.generate(**enc, generation_config=config)
            new_tokens = generated[:, enc["input_ids"].shape[1] :]
            for i, seq in zip(chunk, new_tokens):
                out[i] = tok.decode(seq, skip_special_tokens=True)
        return out


def _safe_name(image_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id)[:80]
    return f"{readable}-{hashlib.sha1(image_id.encode('utf-8')).hexdigest()[:8]}.json"


class JudgeCache:
    """Per-image JSON files ``{"id", "steps": {step: {"key", "response"}}}`` under ``folder``."""

    def __init__(self, folder: str | Path, salt: str):
        self.folder = Path(folder)
        self.salt = salt
        self._entries: dict[str, dict] = {}

    def _key(self, request: JudgeRequest) -> str:
        blob = "\x00".join([self.salt, request.step, request.prompt])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _load(self, image_id: str) -> dict:
        if image_id not in self._entries:
            path = self.folder / _safe_name(image_id)
            entry = {"id": image_id, "steps": {}}
            if path.is_file():
                try:
                    loaded = json.loads(path.read_text(encoding="utf-8"))
                    if isinstance(loaded, dict) and isinstance(loaded.get("steps"), dict):
                        entry = loaded
                except (OSError, json.JSONDecodeError):
                    pass  # a damaged cache file is simply recomputed
            self._entries[image_id] = entry
        return self._entries[image_id]

    def get(self, request: JudgeRequest) -> str | None:
        step = self._load(request.image_id)["steps"].get(request.step)
        if isinstance(step, dict) and step.get("key") == self._key(request):
            return step.get("response")
        return None

    def put(self, request: JudgeRequest, response: str) -> None:
        entry = self._load(request.image_id)
        entry["steps"][request.step] = {"key": self._key(request), "response": response}

    def flush(self, image_ids: set[str]) -> None:
        for image_id in image_ids:
            atomic_write_json(self.folder / _safe_name(image_id), self._load(image_id))


def run_cached(
    backend: JudgeBackend, requests: list[JudgeRequest], cache: JudgeCache | None, chunk: int = 16,
    desc: str = "judge",
) -> tuple[list[str], int]:
    """Responses for ``requests`` (cached ones reused); returns (responses, number of LLM calls made)."""
    responses: list[str | None] = [cache.get(r) if cache else None for r in requests]
    todo = [i for i, r in enumerate(responses) if r is None]
    with tqdm(total=len(todo), desc=desc, unit="call", disable=not todo) as bar:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            texts = backend.generate([requests[i] for i in batch])
            if len(texts) != len(batch):
                raise RuntimeError(f"judge {backend.name} returned {len(texts)} responses for {len(batch)} prompts")
            for i, text in zip(batch, texts):
                responses[i] = text
                if cache:
                    cache.put(requests[i], text)
            if cache:
                cache.flush({requests[i].image_id for i in batch})
            bar.update(len(batch))
    return [r or "" for r in responses], len(todo)
