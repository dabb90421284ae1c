"""Fine-tune the pretrained MiniLM-L6 encoder on Rotten Tomatoes sentiment, pruning every encoder
Linear layer (unstructured) or its attention heads and FFN rows (channels, removed before the
test), optionally distilling from the dense fine-tuned model of the same seed (as the PDP paper
does for BERT)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmarks.harness.data.rotten_tomatoes import TextSplit, load_rotten_tomatoes
from benchmarks.harness.dense_cache import DenseCache
from benchmarks.harness.tasks import ConfigFor, RunOutcome, is_channel
from pdprune import prepare

__all__ = ["MiniLMTask"]


@dataclass(frozen=True)
class _Encoded:
    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = self.mask[index]
        width = int(mask.sum(1).max())  # pad each batch only to its longest text
        return self.ids[index, :width], mask[:, :width], self.labels[index]


@dataclass
class MiniLMTask:
    """Rotten Tomatoes (split by movie) with MiniLM-L6 and a linear head on mean-pooled tokens."""

    steps: int = 250
    batch_size: int = 32
    lr: float = 1e-4
    max_length: int = 64
    distill: bool = False
    distill_alpha: float = 0.9
    distill_temperature: float = 2.0
    train_limit: int | None = None
    test_limit: int | None = None
    # Dense runs by seed (outcome and, for distillation, the teacher's logits on the training
    # set). Tasks built with one shared dict train each dense model once.
    dense_runs: dict[int, tuple[RunOutcome, torch.Tensor | None]] = field(default_factory=dict, repr=False)
    keep_teacher: bool = False
    dense_cache: DenseCache | None = field(default=None, repr=False)  # dense runs of earlier invocations

    @property
    def name(self) -> str:
        return "rotten-tomatoes/minilm" + ("+kd" if self.distill else "")

    @cached_property
    def text(self) -> TextSplit:
        return load_rotten_tomatoes()

    @cached_property
    def encoded(self) -> tuple[_Encoded, _Encoded]:
        from benchmarks.harness.models.minilm import load_tokenizer

        tokenizer = load_tokenizer()

        def encode(texts: list[str], labels: list[int], limit: int | None) -> _Encoded:
            texts, labels = texts[:limit], labels[:limit]
            tokens = tokenizer(
                texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            return _Encoded(tokens["input_ids"], tokens["attention_mask"], torch.tensor(labels))

        return (
            encode(self.text.train_texts, self.text.train_labels, self.train_limit),
            encode(self.text.test_texts, self.text.test_labels, self.test_limit),
        )

    def describe(self) -> dict[str, object]:
        train, test = self.encoded
        return {
            "task": self.name,
            "train_examples": len(train.labels),
            "test_examples": len(test.labels),
            "steps": self.steps,
            "optimizer": (
                f"AdamW lr {self.lr} wd 0.01, linear warm-up 10% then linear decay, batch {self.batch_size}"
            ),
            "distillation": (
                f"from the dense fine-tuned model of the same seed, alpha {self.distill_alpha}, "
                f"T {self.distill_temperature}"
                if self.distill
                else "none"
            ),
        }

    def _model(self, seed: int) -> nn.Module:
        from benchmarks.harness.models.minilm import MiniLMClassifier

        torch.manual_seed(seed)
        return MiniLMClassifier(num_classes=2)

    @torch.no_grad()
    def _logits(self, model: nn.Module, data: _Encoded, batch_size: int = 256) -> torch.Tensor:
        model.eval()
        out = [
            model(*data.batch(torch.arange(s, min(s + batch_size, len(data.labels))))[:2])
            for s in range(0, len(data.labels), batch_size)
        ]
        model.train()
        return torch.cat(out)

    def run(self, seed: int, config_for: ConfigFor | None, progress: bool, label: str) -> RunOutcome:
        from benchmarks.harness.models.minilm import encoder_linear_filter

        train, test = self.encoded
        teacher = None
        if config_for is None and seed not in self.dense_runs and self.dense_cache is not None:
            stored = self.dense_cache.get(self._dense_settings(), seed)
            if stored is not None:
                self.dense_runs[seed] = stored
        if config_for is None and seed in self.dense_runs:
            cached, logits = self.dense_runs[seed]
            if logits is not None or not (self.distill or self.keep_teacher):
                return cached
        if self.distill and config_for is not None:
            if seed not in self.dense_runs or self.dense_runs[seed][1] is None:
                self.run(seed, None, progress, f"teacher s{seed}")
            teacher = self.dense_runs[seed][1]
        model = self._model(seed)
        pruner = None
        if config_for is not None:
            config = config_for(self.steps)
            if config.filter_fn is None:
                config = replace(config, filter_fn=encoder_linear_filter)
            example = train.batch(torch.arange(2))[:2] if is_channel(config) else None
            pruner = prepare(model, config, example_inputs=example)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=0.01)
        warm = max(1, self.steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warm, max(0.0, (self.steps - s) / max(1, self.steps - warm)))
        )
        generator = torch.Generator().manual_seed(seed)
        order = torch.empty(0, dtype=torch.long)
        started = time.perf_counter()
        model.train()
        for _ in tqdm(range(self.steps), desc=label, disable=not progress, leave=False):
            if len(order) < self.batch_size:
                order = torch.cat([order, torch.randperm(len(train.labels), generator=generator)])
            index, order = order[: self.batch_size], order[self.batch_size :]
            ids, mask, labels = train.batch(index)
            logits = model(ids, mask)
            loss = nn.functional.cross_entropy(logits, labels)
            if teacher is not None:
                t = self.distill_temperature
                soft = nn.functional.kl_div(
                    (logits / t).log_softmax(-1),
                    (teacher[index] / t).log_softmax(-1),
                    log_target=True,
                    reduction="batchmean",
                )
                loss = (1 - self.distill_alpha) * loss + self.distill_alpha * t * t * soft
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if pruner is not None:
                pruner.step()
        sparsity = pruner.finalize().achieved_sparsity if pruner is not None else 0.0
        if pruner is not None and is_channel(config):
            pruner.shrink()  # measured as deployed: fewer heads and FFN rows
        seconds = time.perf_counter() - started
        accuracy = float((self._logits(model, test).argmax(1) == test.labels).float().mean())
        outcome = RunOutcome(accuracy, sparsity, seconds, self.steps)
        if config_for is None:
            logits = self._logits(model, train) if self.distill or self.keep_teacher else None
            self.dense_runs[seed] = (outcome, logits)
            if self.dense_cache is not None:
                self.dense_cache.put(self._dense_settings(), seed, outcome, logits)
        return outcome

    def _dense_settings(self) -> dict[str, object]:
        """What a dense run depends on (distillation only changes the pruned runs)."""
        settings = {k: v for k, v in self.describe().items() if k not in ("task", "distillation")}
        return settings | {"max_length": self.max_length}
