"""pdprune.hf.PruningCallback in a real transformers Trainer (tiny GPT-2, CPU, offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import pdprune

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from pdprune.hf import DistillationTrainer, PruningCallback, distillation_loss  # noqa: E402
from pdprune.hf.callback import STATE_FILE  # noqa: E402

VOCAB, WIDTH, CONTEXT = 64, 32, 16
STEPS = 12


def tiny_gpt2(dropout: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        n_embd=WIDTH,
        n_layer=2,
        n_head=2,
        n_inner=64,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, count: int = 64) -> None:
        generator = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, VOCAB, (count, CONTEXT), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def arguments(out: Path, **overrides) -> transformers.TrainingArguments:
    settings = {
        "output_dir": str(out),
        "max_steps": STEPS,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 2,
        "save_steps": 6,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    return transformers.TrainingArguments(**(settings | overrides))


def config(**schedule) -> pdprune.PruneConfig:
    # total_steps is a placeholder: the callback takes the Trainer's max_steps
    plan = {"warmup": 0.25, "ramp": 0.5} | schedule
    return pdprune.PruneConfig(sparsity=0.5, budget="uniform", schedule=pdprune.Schedule(1000, **plan))


def trainer_for(model, out: Path, callback: PruningCallback, **overrides) -> transformers.Trainer:
    trainer = transformers.Trainer(model=model, args=arguments(out, **overrides), train_dataset=Tokens())
    callback.attach(trainer)
    return trainer


def pruned_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_prunes_per_optimizer_step_and_saves_the_zeros(tmp_path: Path) -> None:
    model = tiny_gpt2()
    callback = PruningCallback(config())
    trainer = trainer_for(model, tmp_path / "run", callback)
    trainer.train()
    pruner = callback.pruner
    assert pruner is not None and pruner.finalized
    # 12 optimizer steps of 2 micro-batches each: the pruner stepped once per optimizer step
    assert pruner.step_count == STEPS
    assert pruner.config.schedule.total_steps == STEPS and pruner.config.schedule.warmup_steps == 3
    assert callback.report.achieved_sparsity == pytest.approx(0.5, abs=1e-3)

    trainer.save_model(str(tmp_path / "final"))
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "final"))
    for layer in callback.report.layers:
        weight = reloaded.get_parameter(layer.name)
        assert float(weight.eq(0).float().mean()) == pytest.approx(0.5, abs=1e-3), layer.name

    for step in (6, 12):
        state = json.loads((tmp_path / "run" / f"checkpoint-{step}" / STATE_FILE).read_text())
        assert state["step"] == step


def test_sparsity_in_force_reaches_the_loggers(tmp_path: Path) -> None:
    seen: list[dict[str, float]] = []

    class Logger(transformers.TrainerCallback):  # stands in for a report_to integration
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    model = tiny_gpt2()
    trainer = transformers.Trainer(
        model=model, args=arguments(tmp_path, save_steps=100), train_dataset=Tokens(), callbacks=[Logger()]
    )
    PruningCallback(config(), log_layers=True).attach(trainer)
    trainer.train()
    training_logs = [logs for logs in seen if "loss" in logs]
    sparsity = [logs["pdprune/sparsity"] for logs in training_logs]
    assert len(sparsity) == STEPS // 2
    assert sparsity[0] == 0.0 and sparsity[-1] == pytest.approx(0.5, abs=1e-3)
    assert sparsity == sorted(sparsity)
    last = training_logs[-1]
    assert last["pdprune/max_gain"] > 0
    assert last["pdprune/threshold/transformer.h.0.mlp.c_fc.weight"] > 0
    # and trainer_state.json keeps them with the loss
    kept = [logs["pdprune/sparsity"] for logs in trainer.state.log_history if "loss" in logs]
    assert kept == sparsity


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    whole_model = tiny_gpt2()
    trainer_for(whole_model, tmp_path / "whole", PruningCallback(config())).train()
    whole = pruned_weights(whole_model)

    # a run interrupted after step 6: its output folder holds only checkpoint-6
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-6", resumed_dir / "checkpoint-6")
    resumed_model = tiny_gpt2()
    callback = PruningCallback(config())
    trainer_for(resumed_model, resumed_dir, callback).train(resume_from_checkpoint=True)
    assert callback.pruner is not None and callback.pruner.step_count == STEPS
    resumed = pruned_weights(resumed_model)
    for name, weight in whole.items():
        assert torch.equal(weight, resumed[name]), name


def test_resume_without_the_pruner_state_is_refused(tmp_path: Path) -> None:
    trainer_for(tiny_gpt2(), tmp_path / "whole", PruningCallback(config())).train()
    (tmp_path / "whole" / "checkpoint-6" / STATE_FILE).unlink()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-6", resumed_dir / "checkpoint-6")
    trainer = trainer_for(tiny_gpt2(), resumed_dir, PruningCallback(config()))
    with pytest.raises(FileNotFoundError, match=r"resuming at step 6.*pdprune_pruner\.json"):
        trainer.train(resume_from_checkpoint=True)


def test_load_best_model_at_end_is_refused(tmp_path: Path) -> None:
    args = arguments(
        tmp_path,
        load_best_model_at_end=True,
        eval_strategy="steps",
        eval_steps=6,
        metric_for_best_model="loss",
    )
    trainer = transformers.Trainer(
        model=tiny_gpt2(), args=args, train_dataset=Tokens(), eval_dataset=Tokens(8)
    )
    PruningCallback(config()).attach(trainer)
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        trainer.train()


def test_a_schedule_in_steps_that_does_not_fit_the_run_is_refused(tmp_path: Path) -> None:
    trainer = trainer_for(tiny_gpt2(), tmp_path, PruningCallback(config(warmup=10, ramp=10)))
    with pytest.raises(ValueError, match=r"runs 12 optimizer steps.*fractions"):
        trainer.train()


def test_distillation_loss_is_zero_for_the_teacher_and_counts_only_kept_positions() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 7)
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    student = teacher.clone()
    student[1, 4] += torch.randn(7) * 3
    assert float(distillation_loss(student, teacher, 2.0)) > 0
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 4] = 0  # a padding position
    assert float(distillation_loss(student, teacher, 2.0, mask)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_trainer_mixes_the_losses_and_prunes_with_the_callback(tmp_path: Path) -> None:
    def run(
        alpha: float, teacher_seed: int = 0, **overrides
    ) -> tuple[dict[str, torch.Tensor], PruningCallback]:
        model = tiny_gpt2(dropout=0.0)  # so batches of 8 and two of 4 draw the same (no) dropout
        teacher = tiny_gpt2(dropout=0.0)  # the dense weights the student starts from
        if teacher_seed:
            torch.manual_seed(teacher_seed)
            teacher = transformers.GPT2LMHeadModel(teacher.config)
        callback = PruningCallback(config())
        name = f"{alpha}-{teacher_seed}-{sorted(overrides.items())}"
        args = arguments(tmp_path / name, save_steps=100, optim="sgd", learning_rate=0.5, **overrides)
        trainer = DistillationTrainer(
            model=model, args=args, train_dataset=Tokens(), teacher=teacher, alpha=alpha
        )
        callback.attach(trainer)
        trainer.train()
        return pruned_weights(model), callback

    task_only, _ = run(0.0)
    other_teacher, _ = run(0.0, teacher_seed=7)
    distilled, callback = run(0.95)
    for name, weight in task_only.items():  # with alpha 0 the teacher plays no part
        assert torch.equal(weight, other_teacher[name]), name
    assert any(not torch.allclose(weight, distilled[name], atol=1e-4) for name, weight in task_only.items())
    assert callback.report.achieved_sparsity == pytest.approx(0.5, abs=1e-3)
    # two micro-batches of 4 accumulated give the step one batch of 8 gives
    whole_batches, _ = run(0.95, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    for name, weight in distilled.items():
        assert torch.allclose(weight, whole_batches[name], atol=1e-5), name


def test_distillation_settings_out_of_range_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="alpha"):
        DistillationTrainer(model=tiny_gpt2(), args=arguments(tmp_path), teacher=tiny_gpt2(), alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DistillationTrainer(model=tiny_gpt2(), args=arguments(tmp_path), teacher=tiny_gpt2(), temperature=0)


def test_gpt2_heads_and_mlp_rows_pruned_in_the_trainer_shrink_and_reload(tmp_path: Path) -> None:
    model = tiny_gpt2(dropout=0.0)
    channels = pdprune.PruneConfig(
        sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(1000, warmup=0.25, ramp=0.5)
    )
    callback = PruningCallback(channels, example_inputs={"input_ids": Tokens(2).ids})
    trainer_for(model, tmp_path / "run", callback).train()
    pruner = callback.pruner
    assert pruner is not None and pruner.finalized
    assert {g.unit_label for g in pruner.groups.values()} == {"heads", "channels"}
    ids = Tokens(4).ids
    model.eval()
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    pruner.shrink()
    attention = model.transformer.h[0].attn
    assert (attention.num_heads, attention.c_attn.nf, model.transformer.h[0].mlp.c_fc.nf) == (1, 48, 32)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, masked, atol=1e-5)
    pdprune.hf.save_pretrained(pruner, tmp_path / "shrunk")
    reloaded = pdprune.hf.from_pretrained(tmp_path / "shrunk")
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
