"""Framework integrations, tested with the real libraries on tiny models on the CPU.

The reporters post to a stdlib recording server (mfu_agent.client.testing.FakeAgent).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from metrics_text import one

from mfu_agent.client import Reporter
from mfu_agent.client.testing import FakeAgent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")

F = 2.5e9  # model FLOPs per optimizer step
T = 64  # tokens per optimizer step

RANK_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "MFU_AGENT_TOKEN",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    visible = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
    for name in RANK_ENV + visible + ("MFU_AGENT_URL", "MFU_JOB_ID", "MFU_AGENT_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def fake() -> Iterator[FakeAgent]:
    with FakeAgent() as fake:
        yield fake


# --------------------------------------------------------------------------------------------------
# Lightning
# --------------------------------------------------------------------------------------------------


def _lightning() -> Any:
    if importlib.util.find_spec("lightning") is not None:
        import lightning.pytorch as pl
    else:
        pl = pytest.importorskip("pytorch_lightning")
    return pl


def _tiny_lightning_module(pl: Any, with_validation: bool = False) -> Any:
    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self) -> Any:
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(
                torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
            )
            return torch.utils.data.DataLoader(data, batch_size=2)  # 8 batches per epoch

    if with_validation:

        class TinyWithVal(Tiny):
            def validation_step(self, batch: Any, batch_idx: int) -> Any:
                x, y = batch
                return torch.nn.functional.mse_loss(self.layer(x), y)

            def val_dataloader(self) -> Any:
                return self.train_dataloader()

        return TinyWithVal()
    return Tiny()


def _trainer(pl: Any, callback: Any, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [callback],
    }
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.mark.parametrize(("accumulate", "optimizer_steps"), [(1, 8), (2, 4)])
def test_lightning_callback_reports_optimizer_steps(
    fake: FakeAgent, accumulate: int, optimizer_steps: int
) -> None:
    pl = _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    callback = MfuCallback(
        flops_per_step=F, tokens_per_step=T, job_id="lit-job", url=fake.url, interval=60, token="lit-token"
    )
    trainer = _trainer(pl, callback, accumulate_grad_batches=accumulate)
    trainer.fit(_tiny_lightning_module(pl))

    assert trainer.global_step == optimizer_steps
    reporter = callback.reporter
    assert reporter is not None and reporter.closed  # closed at the end of training
    report = fake.latest(
        job_id="lit-job"
    )  # close() delivered the final totals (interval=60: no periodic post)
    assert report is not None
    assert report["model_flops_total"] == pytest.approx(optimizer_steps * F)
    assert report["tokens_total"] == optimizer_steps * T
    assert report["step"] == optimizer_steps
    assert (report["rank"], report["local_rank"], report["world_size"]) == (0, 0, 1)
    assert report["pid"] == os.getpid()
    assert report["dtype"] in ("fp32", "tf32")  # precision "32-true"
    assert fake.posts[-1].headers["authorization"] == "Bearer lit-token"


def test_lightning_resumed_fit_reports_the_step_it_resumes_from(fake: FakeAgent, tmp_path: Any) -> None:
    """A fit resumed from the checkpoint of step 2 sends start_step 2 (goodput: the agent counts the
    steps redone after the highest step reached as lost work) and counts its steps on from there."""
    pl = _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    def fit(ckpt_path: str | None) -> Any:
        callback = MfuCallback(flops_per_step=F, job_id="lit-resume", url=fake.url, interval=60)
        every_2 = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
        trainer = _trainer(pl, callback, max_steps=4, enable_checkpointing=True)
        trainer.callbacks.append(every_2)
        trainer.fit(_tiny_lightning_module(pl), ckpt_path=ckpt_path)
        return callback

    assert fit(None).reporter.start_step == 0
    (step_2,) = [p for p in tmp_path.iterdir() if "step=2" in p.name]
    resumed = fit(str(step_2))
    assert resumed.reporter.start_step == 2
    sent = [r for r in fake.reports if r.get("job_id") == "lit-resume" and r.get("start_step") == 2]
    assert sent and sent[-1]["step"] == 4  # two steps redone, counted on from the checkpoint's


def test_lightning_validation_does_not_count_and_precision_sets_dtype(fake: FakeAgent) -> None:
    pl = _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    callback = MfuCallback(flops_per_step=F, job_id="lit-bf16", url=fake.url, interval=60)
    trainer = _trainer(pl, callback, precision="bf16-mixed", limit_val_batches=3, num_sanity_val_steps=2)
    trainer.fit(_tiny_lightning_module(pl, with_validation=True))
    report = fake.latest(job_id="lit-bf16")
    assert report is not None
    assert report["step"] == 8  # training batches only; sanity check and validation not counted
    assert report["model_flops_total"] == pytest.approx(8 * F)
    assert report["dtype"] == "bf16"
    assert "tokens_total" not in report


def test_lightning_user_reporter_is_flushed_not_closed(fake: FakeAgent) -> None:
    pl = _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    reporter = Reporter(job_id="lit-own", url=fake.url, rank=3, interval=60)
    try:
        callback = MfuCallback(flops_per_step=F, tokens_per_step=T, reporter=reporter)
        _trainer(pl, callback, max_steps=5).fit(_tiny_lightning_module(pl))
        assert not reporter.closed  # the user owns it
        report = fake.latest(job_id="lit-own")  # flushed at the end of training
        assert report is not None
        assert report["step"] == 5 and report["rank"] == 3  # the user's reporter settings are kept
        assert report["model_flops_total"] == pytest.approx(5 * F)
        assert report["tokens_total"] == 5 * T
    finally:
        reporter.close()


def test_lightning_callback_argument_errors() -> None:
    _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    with pytest.raises(ValueError, match="flops_per_step"):
        MfuCallback(job_id="x")
    with pytest.raises(TypeError, match="unknown Reporter argument"):
        MfuCallback(flops_per_step=F, jobid="x")
    with pytest.raises(ValueError, match="flops_per_step"):
        MfuCallback(flops_per_step=-1.0)


def test_lightning_precision_mapping() -> None:
    _lightning()
    from mfu_agent.integrations.lightning import precision_to_dtype

    assert precision_to_dtype("bf16-mixed") == "bf16"
    assert precision_to_dtype("bf16-true") == "bf16"
    assert precision_to_dtype("16-mixed") == "fp16"
    assert precision_to_dtype("64-true") == "fp64"
    assert precision_to_dtype("transformer-engine") == "fp8"
    assert precision_to_dtype("32-true") in ("fp32", "tf32")


def _fake_trainer(precision: str, world_size: int = 8) -> SimpleNamespace:
    """Just what MfuCallback reads from a Trainer: a real one cannot take the Transformer Engine
    precisions without transformer_engine (and a GPU)."""
    return SimpleNamespace(
        precision=precision,
        global_rank=3,
        local_rank=3,
        world_size=world_size,
        strategy=SimpleNamespace(root_device=None),
        global_step=0,
    )


def _run_fake_fit(callback: Any, trainer: SimpleNamespace, optimizer_steps: int) -> None:
    """setup, on_train_start, one batch per optimizer step, on_train_end, teardown."""
    callback.setup(trainer, None, "fit")
    callback.on_train_start(trainer, None)
    for batch_idx in range(optimizer_steps):
        trainer.global_step += 1
        callback.on_train_batch_end(trainer, None, None, None, batch_idx)
    callback.on_train_end(trainer, None)
    callback.teardown(trainer, None, "fit")


class _RecordingReporter:
    """Stands in for Reporter where a test only checks what the callback passes to it."""

    created: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        type(self).created.append(kwargs)
        self.closed = False
        self.steps = 0

    def step(self, **kwargs: Any) -> None:
        self.steps += 1

    def close(self) -> None:
        self.closed = True

    def flush(self) -> bool:
        return True


@pytest.fixture
def recording_reporter(monkeypatch: pytest.MonkeyPatch) -> type[_RecordingReporter]:
    import mfu_agent.integrations

    monkeypatch.setattr(_RecordingReporter, "created", [])
    monkeypatch.setattr(mfu_agent.integrations, "Reporter", _RecordingReporter)
    return _RecordingReporter


SPLIT = {"fp8": 2.0e9, "bf16": 0.5e9}  # FP8 GEMMs and BF16 attention, per optimizer step


@pytest.mark.parametrize(
    ("precision", "dtype", "amounts"),
    [
        ("bf16-mixed", "bf16", {"job_flops_per_step": 8 * F}),
        ("transformer-engine", "fp8", {"job_flops_per_step": SPLIT, "job_tokens_per_step": 8 * T}),
        ("transformer-engine", "fp8", {"flops_per_step": SPLIT, "tokens_per_step": T}),
    ],
)
def test_lightning_passes_the_amounts_to_the_reporter_as_given(
    recording_reporter: type[_RecordingReporter], precision: str, dtype: str, amounts: dict[str, Any]
) -> None:
    _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    callback = MfuCallback(job_id="lit-pass", **amounts)
    _run_fake_fit(callback, _fake_trainer(precision), optimizer_steps=2)
    (kwargs,) = recording_reporter.created
    assert {k: v for k, v in kwargs.items() if "per_step" in k} == amounts  # as given, nothing added
    assert (kwargs["dtype"], kwargs["world_size"], kwargs["rank"]) == (dtype, 8, 3)
    assert callback.reporter is not None and callback.reporter.steps == 2


def test_lightning_job_flops_are_divided_by_the_world_size(fake: FakeAgent) -> None:
    pl = _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    world = 4  # given explicitly: the tiny trainer runs one process
    callback = MfuCallback(
        job_flops_per_step=world * F,
        job_tokens_per_step=world * T,
        job_id="lit-job-flops",
        url=fake.url,
        interval=60,
        world_size=world,
    )
    _trainer(pl, callback, max_steps=5).fit(_tiny_lightning_module(pl))
    report = fake.latest(job_id="lit-job-flops")
    assert report is not None
    assert report["model_flops_total"] == pytest.approx(5 * F)  # this rank's quarter of the job
    assert report["tokens_total"] == pytest.approx(5 * T)
    assert report["world_size"] == world


@pytest.mark.parametrize(
    ("precision", "other"), [("transformer-engine", "bf16"), ("transformer-engine-float16", "fp16")]
)
def test_lightning_transformer_engine_reports_a_dtype_mapping(
    fake: FakeAgent, precision: str, other: str
) -> None:
    _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    split = {"fp8": 2.0e9, other: 0.5e9}
    callback = MfuCallback(flops_per_step=split, job_id="lit-te", url=fake.url, interval=60)
    _run_fake_fit(callback, _fake_trainer(precision), optimizer_steps=3)
    report = fake.latest(job_id="lit-te")
    assert report is not None
    assert report["model_flops_total"] == pytest.approx({dtype: 3 * f for dtype, f in split.items()})
    assert report["dtype"] == "fp8"  # the rank's precision
    assert report["step"] == 3


@pytest.mark.parametrize(
    ("precision", "other", "amounts"),
    [
        ("transformer-engine", "bf16", {"job_flops_per_step": 8 * F}),
        ("transformer-engine-float16", "fp16", {"flops_per_step": F}),
        ("transformer-engine", "bf16", {"flops_per_step": SPLIT, "hardware_flops_per_step": 2 * F}),
    ],
)
def test_lightning_transformer_engine_with_a_plain_number_reports_nothing(
    fake: FakeAgent,
    caplog: pytest.LogCaptureFixture,
    precision: str,
    other: str,
    amounts: dict[str, Any],
) -> None:
    _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    callback = MfuCallback(job_id="lit-te-plain", url=fake.url, interval=60, **amounts)
    with caplog.at_level("ERROR", logger="mfu_agent.client"):
        _run_fake_fit(callback, _fake_trainer(precision), optimizer_steps=3)  # does not raise
    assert callback.reporter is None
    assert fake.posts == []
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]  # one error, not one per hook
    message = record.getMessage()
    assert precision in message and "FP8" in message and other in message
    assert "{'fp8': ..., '" + other + "': ...}" in message
    assert "mfu_agent.flops.fp8_flops_by_dtype" in message


def test_lightning_transformer_engine_explicit_dtype_or_own_reporter_is_trusted(
    fake: FakeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    explicit = MfuCallback(flops_per_step=F, job_id="lit-te-fp8", url=fake.url, interval=60, dtype="fp8")
    _run_fake_fit(explicit, _fake_trainer("transformer-engine"), optimizer_steps=2)
    report = fake.latest(job_id="lit-te-fp8")
    assert report is not None and report["model_flops_total"] == pytest.approx(2 * F)

    reporter = Reporter(job_id="lit-te-own", url=fake.url, interval=60, dtype="bf16")
    try:
        own = MfuCallback(flops_per_step=F, reporter=reporter)
        _run_fake_fit(own, _fake_trainer("transformer-engine"), optimizer_steps=2)
        report = fake.latest(job_id="lit-te-own")
        assert report is not None and report["model_flops_total"] == pytest.approx(2 * F)
    finally:
        reporter.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_lightning_transformer_engine_dtypes() -> None:
    _lightning()
    from mfu_agent.integrations.lightning import precision_to_dtype, transformer_engine_other_dtype

    assert transformer_engine_other_dtype("transformer-engine") == "bf16"
    assert transformer_engine_other_dtype("transformer-engine-float16") == "fp16"
    for precision in ("bf16-mixed", "16-mixed", "32-true", "64-true"):
        assert transformer_engine_other_dtype(precision) is None
    assert precision_to_dtype("transformer-engine-float16") == "fp8"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"flops_per_step": {"fp8": -1.0}}, ValueError, r"flops_per_step\['fp8'\]"),
        ({"job_flops_per_step": {"fp8": float("nan")}}, ValueError, "job_flops_per_step"),
        ({"job_flops_per_step": {"fp9": 1.0}}, ValueError, "job_flops_per_step.*fp9"),
        ({"job_flops_per_step": {}}, ValueError, "job_flops_per_step"),
        ({"job_flops_per_step": "1e12"}, ValueError, "job_flops_per_step"),
        ({"job_flops_per_step": F, "job_tokens_per_step": -1}, ValueError, "job_tokens_per_step"),
        ({"flops_per_step": F, "job_flops_per_step": F}, ValueError, "not both"),
        ({"job_flops_per_step": F, "tokens_per_step": T, "job_tokens_per_step": T}, ValueError, "not both"),
    ],
)
def test_callback_amount_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    from mfu_agent.integrations import _ReporterOwner

    with pytest.raises(error, match=match):
        _ReporterOwner(
            "Cb", kwargs.pop("flops_per_step", None), kwargs.pop("tokens_per_step", None), None, {}, **kwargs
        )


def test_job_amounts_with_a_users_reporter_are_refused() -> None:
    from mfu_agent.integrations import _ReporterOwner

    reporter = Reporter(job_id="x", url="http://127.0.0.1:9")
    try:
        with pytest.raises(TypeError, match="job_flops_per_step"):
            _ReporterOwner("Cb", None, None, reporter, {}, job_flops_per_step=F)
    finally:
        reporter.close()


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------------


def _tiny_gpt2() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _tiny_lm_dataset(n: int = 16, seq_len: int = 8) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 32, (seq_len,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def test_huggingface_trainer_reports_optimizer_steps(fake: FakeAgent, tmp_path: Any) -> None:
    """The full transformers Trainer (needs accelerate, which Trainer requires for PyTorch)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    callback = MfuTrainerCallback(
        flops_per_step=F, tokens_per_step=T, job_id="hf-job", url=fake.url, interval=60, token="hf-token"
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        max_steps=3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=_tiny_gpt2(), args=args, train_dataset=_tiny_lm_dataset(), callbacks=[callback]
    )
    trainer.train()

    assert trainer.state.global_step == 3
    assert callback.reporter is not None and callback.reporter.closed
    report = fake.latest(job_id="hf-job")
    assert report is not None
    assert report["model_flops_total"] == pytest.approx(3 * F)
    assert report["tokens_total"] == 3 * T
    assert report["step"] == 3
    assert (report["rank"], report["local_rank"], report["world_size"]) == (0, 0, 1)
    assert report["dtype"] in ("fp32", "tf32")
    assert fake.posts[-1].headers["authorization"] == "Bearer hf-token"


def test_huggingface_resumed_run_reports_the_step_it_resumes_from(fake: FakeAgent, tmp_path: Any) -> None:
    """A Trainer resumed from checkpoint-2 sends start_step 2 (goodput: the agent counts the steps redone
    after the highest step reached as lost work) and counts its steps on from there."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    def run(resume: str | None) -> Any:
        callback = MfuTrainerCallback(flops_per_step=F, job_id="hf-resume", url=fake.url, interval=60)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path),
            report_to=[],
            use_cpu=True,
            max_steps=4,
            per_device_train_batch_size=2,
            save_strategy="steps",
            save_steps=2,
            logging_strategy="no",
            disable_tqdm=True,
        )
        trainer = transformers.Trainer(
            model=_tiny_gpt2(), args=args, train_dataset=_tiny_lm_dataset(8), callbacks=[callback]
        )
        trainer.train(resume_from_checkpoint=resume)
        return callback

    first = run(None)
    assert first.reporter is not None and first.reporter.start_step == 0
    second = run(str(tmp_path / "checkpoint-2"))
    assert second.reporter is not None and second.reporter.start_step == 2
    sent = [r for r in fake.reports if r.get("job_id") == "hf-resume" and r.get("start_step") == 2]
    assert sent and sent[-1]["step"] == 4  # two steps redone, counted on from the checkpoint's


def test_huggingface_callback_in_a_real_training_loop(fake: FakeAgent) -> None:
    """Drives the callback through transformers' own CallbackHandler, TrainerState and
    TrainerControl around a real (tiny) GPT-2 trained on the CPU with gradient accumulation.
    Runs without accelerate: ``args`` carries just what a TrainingArguments would."""
    from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    model = _tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    callback = MfuTrainerCallback(
        flops_per_step=F, tokens_per_step=T, job_id="hf-loop", url=fake.url, interval=60, token="t0k"
    )
    handler = CallbackHandler([callback], model, None, optimizer, None)
    args = SimpleNamespace(
        process_index=2, local_process_index=0, world_size=4, bf16=True, fp16=False, tf32=None
    )
    state = TrainerState()
    control = TrainerControl()

    data = _tiny_lm_dataset()
    accumulation, optimizer_steps = 2, 3
    control = handler.on_train_begin(args, state, control)
    batches = iter(torch.utils.data.DataLoader(data, batch_size=2))
    for _ in range(optimizer_steps):
        for micro in range(accumulation):
            batch = next(batches)
            loss = model(**batch).loss / accumulation
            loss.backward()
            if micro < accumulation - 1:
                control = handler.on_substep_end(args, state, control)  # must not count
        optimizer.step()
        optimizer.zero_grad()
        state.global_step += 1
        control = handler.on_step_end(args, state, control)
    assert callback.reporter is not None and callback.reporter.steps == optimizer_steps
    control = handler.on_train_end(args, state, control)

    assert callback.reporter.closed
    report = fake.latest(job_id="hf-loop")
    assert report is not None
    assert report["model_flops_total"] == pytest.approx(optimizer_steps * F)
    assert report["tokens_total"] == optimizer_steps * T
    assert report["step"] == optimizer_steps
    assert (report["rank"], report["local_rank"], report["world_size"]) == (2, 0, 4)  # from args
    assert report["dtype"] == "bf16"
    assert fake.posts[-1].headers["authorization"] == "Bearer t0k"


def test_huggingface_explicit_arguments_win_over_training_args(fake: FakeAgent) -> None:
    from transformers.trainer_callback import TrainerControl, TrainerState

    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    callback = MfuTrainerCallback(
        flops_per_step=F, job_id="hf-explicit", url=fake.url, interval=60, rank=7, dtype="fp8"
    )
    args = SimpleNamespace(process_index=1, local_process_index=1, world_size=8, bf16=True, fp16=False)
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    report = fake.latest(job_id="hf-explicit")
    assert report is not None
    assert (report["rank"], report["local_rank"], report["world_size"]) == (7, 1, 8)
    assert report["dtype"] == "fp8"
    assert report["step"] == 1


def test_huggingface_job_flops_mapping_is_divided_by_the_world_size(fake: FakeAgent) -> None:
    from transformers.trainer_callback import TrainerControl, TrainerState

    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    world = 4
    job_split = {"fp8": world * 2.0e9, "bf16": world * 0.5e9}  # the whole job's step, by dtype
    callback = MfuTrainerCallback(
        job_flops_per_step=job_split,
        job_tokens_per_step=world * T,
        job_id="hf-job-split",
        url=fake.url,
        interval=60,
    )
    args = SimpleNamespace(process_index=1, local_process_index=1, world_size=world, bf16=True, fp16=False)
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    for _ in range(3):
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    report = fake.latest(job_id="hf-job-split")
    assert report is not None
    assert report["model_flops_total"] == pytest.approx({"fp8": 3 * 2.0e9, "bf16": 3 * 0.5e9})
    assert report["tokens_total"] == pytest.approx(3 * T)
    assert report["world_size"] == world


def test_huggingface_callback_argument_errors() -> None:
    pytest.importorskip("transformers")
    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    with pytest.raises(ValueError, match="flops_per_step"):
        MfuTrainerCallback(job_id="x")
    with pytest.raises(TypeError, match="either reporter"):
        MfuTrainerCallback(reporter=Reporter(job_id="x", url="http://127.0.0.1:9"), job_id="y")


def test_integrations_package_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import mfu_agent.integrations\n"
        "bad = [m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


H100 = "NVIDIA H100 80GB HBM3"
A100_MIG = "NVIDIA A100-SXM4-40GB MIG 1g.5gb"
UUID = "0b42632a-bc5c-f731-724b-6936a19c4b24"


def _stub_cuda(monkeypatch: pytest.MonkeyPatch, names: dict[int, str], current: int = 0) -> list[int]:
    """torch.cuda as cuda_gpu_uuids reads it, for devices ``names`` (index -> device name): device i
    has UUID ``<i>`` + UUID[1:] (torch's spelling, no prefix). Returns the indices asked about."""
    asked: list[int] = []

    def name(index: int) -> str:
        asked.append(index)
        return names[index]

    monkeypatch.setattr(torch.cuda, "get_device_name", name)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid=f"{index}{UUID[1:]}")
    )
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    return asked


def test_cuda_gpu_uuids_names_the_gpu_as_nvml_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from mfu_agent.integrations import cuda_gpu_uuids

    asked = _stub_cuda(monkeypatch, {0: A100_MIG, 1: H100}, current=0)
    assert cuda_gpu_uuids(torch.device("cuda", 1)) == [f"GPU-1{UUID[1:]}"]  # a whole GPU
    assert cuda_gpu_uuids(torch.device("cuda", 0)) == [f"MIG-0{UUID[1:]}"]  # a MIG instance's own UUID
    assert cuda_gpu_uuids(torch.device("cuda")) == [f"MIG-0{UUID[1:]}"]  # the current device
    assert asked == [1, 0, 0]
    assert cuda_gpu_uuids(torch.device("cpu")) is None
    assert cuda_gpu_uuids(None) is None


@pytest.mark.parametrize(
    ("name", "uuid", "expected"),
    [
        (H100, f"GPU-{UUID}", f"GPU-{UUID}"),  # already spelt as NVML does
        (A100_MIG, f"MIG-{UUID}", f"MIG-{UUID}"),
        (A100_MIG, UUID, f"MIG-{UUID}"),
        (H100, "", None),
        (H100, "not a uuid!", None),  # the Reporter would refuse it: nothing rather than a crash
        (H100, b"\x0b\x42", None),  # old torch: bytes
    ],
)
def test_cuda_gpu_uuids_spelling(
    monkeypatch: pytest.MonkeyPatch, name: str, uuid: Any, expected: str | None
) -> None:
    from mfu_agent.integrations import cuda_gpu_uuids

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid=uuid))
    assert cuda_gpu_uuids(torch.device("cuda", 0)) == (None if expected is None else [expected])


def test_cuda_gpu_uuids_is_best_effort(monkeypatch: pytest.MonkeyPatch) -> None:
    from mfu_agent.integrations import cuda_gpu_uuids

    def broken(index: int) -> Any:
        raise RuntimeError("no driver")

    monkeypatch.setattr(torch.cuda, "get_device_name", broken)
    assert cuda_gpu_uuids(torch.device("cuda", 0)) is None  # never raises
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: H100)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace())  # no uuid
    assert cuda_gpu_uuids(torch.device("cuda", 0)) is None


@pytest.mark.parametrize(("names", "index", "gpus"), [({2: H100}, 2, "GPU-"), ({2: A100_MIG}, 2, "MIG-")])
def test_lightning_sends_the_uuid_of_its_device(
    fake: FakeAgent, monkeypatch: pytest.MonkeyPatch, names: dict[int, str], index: int, gpus: str
) -> None:
    _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-other,GPU-other2,GPU-other3,GPU-other4")  # loses
    _stub_cuda(monkeypatch, names)
    trainer = _fake_trainer("bf16-mixed")
    trainer.strategy = SimpleNamespace(root_device=torch.device("cuda", index))
    callback = MfuCallback(flops_per_step=F, job_id="lit-uuid", url=fake.url, interval=60)
    _run_fake_fit(callback, trainer, optimizer_steps=2)
    report = fake.latest(job_id="lit-uuid")
    assert report is not None and report["step"] == 2
    assert report["gpus"] == [f"{gpus}{index}{UUID[1:]}"]
    assert report["local_rank"] == 3


@pytest.mark.parametrize(("names", "gpus"), [({1: H100}, "GPU-"), ({1: A100_MIG}, "MIG-")])
def test_huggingface_sends_the_uuid_of_its_device(
    fake: FakeAgent, monkeypatch: pytest.MonkeyPatch, names: dict[int, str], gpus: str
) -> None:
    from transformers.trainer_callback import TrainerControl, TrainerState

    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    _stub_cuda(monkeypatch, names)
    callback = MfuTrainerCallback(flops_per_step=F, job_id="hf-uuid", url=fake.url, interval=60)
    args = SimpleNamespace(
        process_index=1,
        local_process_index=1,
        world_size=2,
        bf16=True,
        fp16=False,
        device=torch.device("cuda", 1),
    )
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    report = fake.latest(job_id="hf-uuid")
    assert report is not None and report["step"] == 1
    assert report["gpus"] == [f"{gpus}1{UUID[1:]}"]


def test_callbacks_on_the_cpu_leave_the_device_to_the_environment(
    fake: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.trainer_callback import TrainerControl, TrainerState

    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "MIG-aaaa,MIG-bbbb")
    callback = MfuTrainerCallback(flops_per_step=F, job_id="hf-env", url=fake.url, interval=60)
    args = SimpleNamespace(process_index=1, local_process_index=1, world_size=2, bf16=True, fp16=False)
    args.device = torch.device("cpu")
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    callback.on_train_end(args, state, control)
    report = fake.latest(job_id="hf-env")
    assert report is not None and report["gpus"] == ["MIG-bbbb"]  # no CUDA device: the environment's


def test_lightning_end_to_end_with_the_real_agent(served: Any) -> None:
    pl = _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    _agent, client = served
    callback = MfuCallback(flops_per_step=F, tokens_per_step=T, job_id="lit-e2e", url=str(client.base_url))
    _trainer(pl, callback, max_steps=6).fit(_tiny_lightning_module(pl))
    reporter = callback.reporter
    stats = reporter.stats  # type: ignore[union-attr]
    assert stats["posts_ok"] >= 1 and stats["last_status"] == 202, stats
    assert reporter.steps == 6  # type: ignore[union-attr]
    # Training ended: the callback closed its reporter, whose final report (the 6 steps' totals) the
    # agent applied and then dropped the finished rank at once.
    assert stats["final_report"] == "delivered", stats
    assert "lit-e2e" not in {j["job_id"] for j in client.get("/v1/jobs").json()["jobs"]}
    assert one(client.get("/metrics").text, "mfu_agent_rank_evictions_total", reason="final") == 1


# --------------------------------------------------------------------------------------------------
# Telemetry never stops training: each bad setting through a real (tiny, CPU) training run
# --------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on leaving: connections to it are refused


# (what is wrong, the environment that says it, words the one log line must hold: the setting, the fix)
BAD_SETTINGS = [
    ("url without a scheme", {"MFU_AGENT_URL": "127.0.0.1:8469"}, ["MFU_AGENT_URL", "http://127.0.0.1:8469"]),
    ("job id with a space", {"MFU_JOB_ID": "my job"}, ["MFU_JOB_ID", "job_id=", "[A-Za-z0-9._:/-]"]),
    ("SLURM job id unusable", {"MFU_JOB_ID": None, "SLURM_JOB_ID": "12 34"}, ["SLURM_JOB_ID", "MFU_JOB_ID"]),
    ("no job id", {"MFU_JOB_ID": None}, ["no job id", "MFU_JOB_ID", "job_id="]),
    ("token file missing", {"MFU_AGENT_TOKEN_FILE": "/nonexistent/mfu-token"}, ["MFU_AGENT_TOKEN_FILE"]),
    ("token file empty", {"MFU_AGENT_TOKEN_FILE": os.devnull}, ["MFU_AGENT_TOKEN_FILE", "empty"]),
    ("agent unreachable", {"MFU_AGENT_URL": "closed port"}, ["cannot reach the agent", "retrying"]),
    ("CUDA_VISIBLE_DEVICES garbage", {"CUDA_VISIBLE_DEVICES": "garbage"}, ["CUDA_VISIBLE_DEVICES", "gpus="]),
]
STEPS = 3


@pytest.fixture
def bad_setting(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, fake: FakeAgent
) -> list[str]:
    """Applies one of BAD_SETTINGS over a working environment (a job id, the fake agent's URL)."""
    from mfu_agent.client import _reporter

    _name, env, words = request.param
    monkeypatch.setenv("MFU_JOB_ID", "cb-job")
    monkeypatch.setenv("MFU_AGENT_URL", fake.url)
    monkeypatch.setattr(_reporter, "_visible_warning_logged", False)  # a once-per-process warning
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(
                name, f"http://127.0.0.1:{_closed_port()}" if value == "closed port" else value
            )
    return words


def _logged_once(caplog: pytest.LogCaptureFixture, words: list[str]) -> None:
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("mfu_agent") and r.levelno >= logging.WARNING
    ]
    assert len(lines) == 1, lines
    assert all(word in lines[0] for word in words), lines[0]


class _FailingReporter(Reporter):
    """A Reporter (the user's own, passed to the callback) whose step() raises."""

    def step(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("counter broke")


def _params() -> Any:
    return pytest.mark.parametrize(
        "bad_setting", BAD_SETTINGS, ids=[case[0] for case in BAD_SETTINGS], indirect=True
    )


@_params()
def test_lightning_training_goes_on_with_a_bad_setting(
    bad_setting: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    pl = _lightning()
    from mfu_agent.integrations.lightning import MfuCallback

    callback = MfuCallback(flops_per_step=F, interval=60)
    trainer = _trainer(pl, callback, max_steps=STEPS)
    with caplog.at_level(logging.WARNING):
        trainer.fit(_tiny_lightning_module(pl))
    assert trainer.global_step == STEPS
    _logged_once(caplog, bad_setting)


def _hf_train(callback: Any, tmp_path: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        max_steps=STEPS,
        per_device_train_batch_size=2,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=_tiny_gpt2(), args=args, train_dataset=_tiny_lm_dataset(8), callbacks=[callback]
    )
    trainer.train()
    return trainer


@_params()
def test_huggingface_training_goes_on_with_a_bad_setting(
    bad_setting: list[str], caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from mfu_agent.integrations.huggingface import MfuTrainerCallback

    callback = MfuTrainerCallback(flops_per_step=F, interval=60)
    with caplog.at_level(logging.WARNING):
        trainer = _hf_train(callback, tmp_path)
    assert trainer.state.global_step == STEPS
    _logged_once(caplog, bad_setting)


@pytest.mark.parametrize("framework", ["lightning", "huggingface"])
def test_a_step_that_raises_is_logged_once_and_training_goes_on(
    framework: str, fake: FakeAgent, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    reporter = _FailingReporter(job_id="cb-failing", url=fake.url, interval=60, rank=0, world_size=1)
    try:
        with caplog.at_level(logging.WARNING):
            if framework == "lightning":
                pl = _lightning()
                from mfu_agent.integrations.lightning import MfuCallback

                trainer = _trainer(pl, MfuCallback(flops_per_step=F, reporter=reporter), max_steps=STEPS)
                trainer.fit(_tiny_lightning_module(pl))
                assert trainer.global_step == STEPS
                hook = "on_train_batch_end"
            else:
                from mfu_agent.integrations.huggingface import MfuTrainerCallback

                trainer = _hf_train(MfuTrainerCallback(flops_per_step=F, reporter=reporter), tmp_path)
                assert trainer.state.global_step == STEPS
                hook = "on_step_end"
    finally:
        reporter.close()
    _logged_once(caplog, [hook, "RuntimeError: counter broke", "training goes on"])
