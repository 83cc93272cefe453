"""Fine-tuning a pretrained transformer (families gpt and bert: gpt, bert, minilm) on one task with the HF Trainer.

A scratch twin (source scratch, twin_of: a pretrained model, e.g. gpt_scratch) is trained the same way from the
same architecture and tokenizer, randomly initialised (scratch_copy): the control that shows what pretraining adds.

- Dynamic padding, validation every epoch, best epoch kept (the task's main metric), early stopping,
  checkpoints in checkpoints/finetune-<model>-<task>/ (resumed by the driver, pipeline/train/driver.py).
- The test split is scored once, by the selected checkpoint. Every task is served through a pyfunc wrapper
  (pipeline/models/pyfunc.py), with the task kind's one response shape (qa: {"answer", "score"}; translation,
  summarization: a list of output texts).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core import distributed
from pipeline.core.config import Params
from pipeline.core.metrics import classification_metrics, ner_metrics, qa_metrics, text_metrics
from pipeline.core.run_settings import RunSettings
from pipeline.data.task_data import TEXT_PAIRS, word_predictions
from pipeline.train.family import ModelFamily, TestScores, TrainOutcome
from pipeline.train.finetune_setup import TaskSetup, argmax_logits, build_setup, qa_references
from pipeline.train.hf_trainer import (
    GenerationEvalTrainer,
    MlflowEpochLogger,
    OrderedTrainer,
    TrainingSpeed,
    best_epoch,
)
from pipeline.train.plots import learning_curve_from_history

log = logging.getLogger(__name__)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_path(model: str, params: Params) -> Path:
    """The checked folder (safetensors weights and a tokenizer) or hub id the model starts from."""
    from pipeline.models.loading import checked_model_path

    return Path(checked_model_path(model, params))


def scratch_copy(model, seed: int):
    """The same architecture as `model` (its config: sizes, task head, special token ids), randomly initialised
    with `seed`: the scratch twin's starting point. Parameter count equal, weights not."""
    import copy

    from transformers import set_seed

    set_seed(seed)
    fresh = type(model)(copy.deepcopy(model.config)).to(dtype=model.dtype, device=model.device)
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(model.generation_config)
    return fresh


def _device_settings() -> dict:
    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported()}


def _training_args(setup: TaskSetup, s: RunSettings, resuming: bool):
    from transformers import TrainingArguments

    run, common = s.training, s.common
    return TrainingArguments(
        output_dir=str(s.checkpoint_dir),
        num_train_epochs=run.epochs,
        max_steps=run.max_steps or -1,
        # batch sizes are global: under torchrun each of N processes takes 1/N (pipeline/core/distributed.py)
        per_device_train_batch_size=distributed.per_process_batch(
            s.micro_batch_size or s.batch_size, f"{s.name} {'micro_' if s.micro_batch_size else ''}batch_size"
        ),
        gradient_accumulation_steps=s.accumulation_steps,
        per_device_eval_batch_size=distributed.per_process_batch(
            common.eval_batch_size, "train.common.eval_batch_size"
        ),
        learning_rate=run.learning_rate,
        weight_decay=common.weight_decay,
        warmup_steps=common.warmup_ratio,  # a float < 1 is a fraction of all steps
        eval_strategy="epoch",
        eval_on_start=not resuming,  # epoch 0 of the learning curve: the untrained model's validation score
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=common.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=setup.main_metric,
        greater_is_better=True,
        prediction_loss_only=setup.generator is not None,  # generated text is scored from generation
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        report_to="none",
        seed=s.seed,
        data_seed=s.seed,
        train_sampling_strategy="group_by_length" if common.length_grouped_batches else "random",
        dataloader_num_workers=0,
        disable_tqdm=False,
        **_device_settings(),
    )


def build_trainer(setup: TaskSetup, s: RunSettings, callbacks: list, resuming: bool):
    """The transformers Trainer that fine-tunes setup's model with settings s: early stopping on the main
    validation metric, generated validation scores for the generative setups, evaluation longest first."""
    from transformers import EarlyStoppingCallback

    kwargs = dict(
        model=setup.model,
        args=_training_args(setup, s, resuming),
        train_dataset=setup.encoded["train"],
        eval_dataset=setup.encoded["validation"],
        data_collator=setup.collator,
        processing_class=setup.tokenizer,
        callbacks=[*callbacks, EarlyStoppingCallback(early_stopping_patience=s.common.patience)],
    )
    if setup.kind == "qa" and setup.generator is not None:  # gpt: answers generated after the prompt
        validation = setup.data["validation"]
        return GenerationEvalTrainer(
            generator=setup.generator,
            sources=list(zip(validation["question"], validation["context"])),
            references=qa_references(validation),
            max_new_tokens=s.generation.max_new_tokens,
            batch_size=s.common.eval_batch_size,
            **kwargs,
        )
    if setup.generator is not None:
        pair, validation = TEXT_PAIRS[setup.kind], setup.data["validation"]
        scored = validation.select(range(min(s.training.val_generation_examples or len(validation), len(validation))))
        return GenerationEvalTrainer(
            generator=setup.generator,
            sources=scored[pair.source],
            references=scored[pair.target],
            max_new_tokens=s.generation.max_new_tokens,
            batch_size=s.common.eval_batch_size,
            **kwargs,
        )
    if setup.kind == "qa":  # extractive: EM/F1 from the windows' start/end logits (finetune_setup.compute_metrics)
        return OrderedTrainer(compute_metrics=setup.compute_metrics, **kwargs)
    return OrderedTrainer(compute_metrics=setup.compute_metrics, preprocess_logits_for_metrics=argmax_logits, **kwargs)


# ---------------------------------------------------------------- the family
class PretrainedTransformer(ModelFamily):
    """gpt or bert weights (this pipeline's pretraining or a loaded checkpoint) with the task's head."""

    def __init__(self, settings: RunSettings, data, params: Params):
        from transformers import set_seed

        super().__init__(settings, data, params)
        self.family = settings.family
        set_seed(settings.seed)
        # a scratch twin reads its twin's folder for the architecture (config.json) and the tokenizer only
        self.weights = weights_path(settings.twin_of or settings.model, params)
        self.setup = build_setup(
            settings.family,
            self.weights,
            settings.task,
            data,
            settings.training.max_length,
            settings.generation.max_new_tokens,
            settings.qa,
        )
        if settings.source == "scratch":
            self.setup.model = scratch_copy(self.setup.model, settings.seed)
            if self.setup.generator is not None:
                self.setup.generator.model = self.setup.model
            if self.setup.reader is not None:
                self.setup.reader.model = self.setup.model
        self.trainer = None

    @property
    def inputs(self) -> list[Path]:
        """The local weights folder (this pipeline's pretraining or a loaded checkpoint) and the tokenizers: the
        driver digests them for the checkpoint fingerprint and tags the DVC-tracked ones."""
        return [*([self.weights] if self.weights.is_dir() else []), *self.setup.inputs]

    def fingerprint(self) -> dict:
        return {"weights": str(self.weights)}

    def describe(self) -> dict[str, object]:
        setup = self.setup
        scratch = self.settings.source == "scratch"
        return {
            "weights": f"{self.weights} (config and tokenizer only: random init)" if scratch else str(self.weights),
            "architecture": type(setup.model).__name__,
            "max_length_used": setup.max_length,
            "tokenization": f"{type(setup.tokenizer).__name__} (vocab {len(setup.tokenizer)})",
            "device": str(setup.model.device),
        }

    @property
    def collective_scoring(self) -> bool:
        return self.setup.kind in ("classification", "ner")  # scored by Trainer.predict; generation is not

    def fit(self, resume_from: Path | None) -> TrainOutcome:
        speed = TrainingSpeed()
        self.trainer = trainer = build_trainer(
            self.setup, self.settings, [MlflowEpochLogger(), speed], resuming=bool(resume_from)
        )
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_time = time.perf_counter() - start
        self.setup.model = trainer.model  # the selected (best) checkpoint's weights
        if self.setup.generator is not None:
            self.setup.generator.model = trainer.model
        if self.setup.reader is not None:
            self.setup.reader.model = trainer.model
        return TrainOutcome(
            curve=learning_curve_from_history(trainer.state.log_history),
            best_epoch=best_epoch(trainer),
            train_time_s=train_time,
            tokens_per_s=speed.tokens_per_s,
            param_count=param_count(self.setup.model),
        )

    def score_test(self) -> TestScores:
        """Test metrics of the selected model; classification also gets its confusion matrix."""
        setup, test = self.setup, self.setup.data["test"]
        if setup.kind == "qa":
            return self._score_qa(test)
        if setup.generator is not None:
            return self._score_generated(test)
        output = self.trainer.predict(setup.encoded["test"], metric_key_prefix="test")
        predictions = np.asarray(output.predictions)
        if setup.kind == "classification":
            actual = [int(x) for x in test["label"]]
            predicted = predictions.tolist()
            metrics = classification_metrics(actual, predicted, len(setup.labels))
            items = [{"gold": a, "prediction": p} for a, p in zip(actual, predicted)]
            return TestScores(metrics, (actual, predicted, list(setup.labels)), items)
        # ner: truth = every word's tag (words cut off by max_length count as predicted 'O')
        pred_tags = [
            [setup.labels[p] for p in word_predictions(pred, [int(x) for x in labels])]
            for pred, labels in zip(predictions, output.label_ids)
        ]
        true_tags = [[setup.labels[t] for t in tags] for tags in test["ner_tags"]]
        items = [{"gold": t, "prediction": p} for t, p in zip(true_tags, pred_tags)]
        return TestScores(ner_metrics(true_tags, pred_tags), items=items)

    def _answers(self, questions, contexts, progress: bool = False) -> list[tuple[str, float | None]]:
        """(answer, score) per question: extracted span (bert family) or greedy generation (gpt)."""
        setup, batch_size = self.setup, self.settings.common.eval_batch_size
        if setup.reader is not None:
            return setup.reader.answer(questions, contexts, batch_size=batch_size, progress=progress)
        return setup.generator.answer(
            questions,
            contexts,
            num_beams=1,
            max_new_tokens=self.settings.generation.max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )

    def _score_qa(self, test) -> TestScores:
        golds = qa_references(test)
        predictions = [text for text, _ in self._answers(test["question"], test["context"], progress=True)]
        for question, gold, prediction in list(zip(test["question"], golds, predictions))[:3]:
            log.info("test example:\n  question: %s\n  gold: %s\n  prediction: %s", question, gold, prediction)
        items = [{"gold": g, "prediction": p} for g, p in zip(golds, predictions)]
        return TestScores(qa_metrics(golds, predictions), items=items)

    def _score_generated(self, test) -> TestScores:
        """Beam search (train.generation) gives the test metrics; greedy ones are kept as <metric>_greedy (the same
        when the run's num_beams is 1)."""
        setup, gen, pair = self.setup, self.settings.generation, TEXT_PAIRS[self.setup.kind]
        sources, references = test[pair.source], test[pair.target]
        options = dict(
            max_new_tokens=gen.max_new_tokens,
            length_penalty=gen.length_penalty,
            batch_size=self.settings.common.eval_batch_size,
            progress=True,
        )
        greedy_outputs = setup.generator.generate(sources, num_beams=1, **options)
        greedy = text_metrics(setup.kind, references, greedy_outputs)
        if gen.num_beams == 1:  # the test decoding is greedy itself: no second pass
            outputs, beam = greedy_outputs, greedy
        else:
            outputs = setup.generator.generate(sources, num_beams=gen.num_beams, **options)
            beam = text_metrics(setup.kind, references, outputs)
        for source, out, ref in list(zip(sources, outputs, references))[:3]:
            log.info("test example:\n  source: %s\n  output: %s\n  reference: %s", source, out, ref)
        items = [{"gold": ref, "prediction": out} for ref, out in zip(references, outputs)]
        return TestScores({**beam, **{f"{k}_greedy": v for k, v in greedy.items()}}, items=items)

    def latency_examples(self, n: int) -> list:
        test = self.setup.data["test"]
        self.setup.model.eval()
        return list(test.select(range(min(n, len(test)))))

    @torch.no_grad()
    def infer_one(self, row: dict) -> None:
        """Tokenize + forward (or generate), batch 1."""
        setup = self.setup
        if setup.kind == "qa":  # extracted span (bert family) or generated answer (gpt)
            self._answers([row["question"]], [row["context"]])
            return
        if setup.generator is not None:
            gen = self.settings.generation
            setup.generator.generate(
                [row[TEXT_PAIRS[setup.kind].source]],
                num_beams=gen.num_beams,
                max_new_tokens=gen.max_new_tokens,
                length_penalty=gen.length_penalty,
            )
            return
        text = row["text"] if setup.kind == "classification" else " ".join(row["tokens"])
        enc = setup.tokenizer(
            text, truncation=True, max_length=setup.max_length, return_tensors="pt", return_token_type_ids=False
        ).to(setup.model.device)
        setup.model(**enc).logits.argmax(-1)

    def register(self, export_dir: Path) -> str:
        """Log the selected model as a pyfunc wrapper (pipeline.models.pyfunc: the task kind's one response shape,
        the same as the scratch families') and register it as <task>-<model>."""
        from pipeline.models.pyfunc import (
            MODEL_ARTIFACT,
            ClassificationModel,
            ConditionalGenerationModel,
            NerModel,
            QAModel,
        )
        from pipeline.tracking import registry

        setup, s = self.setup, self.settings
        test = setup.data["test"]
        shutil.rmtree(export_dir, ignore_errors=True)
        if setup.kind == "qa":
            (setup.reader or setup.generator).save(export_dir)
            wrapper = QAModel(s.generation.max_new_tokens, s.common.eval_batch_size)
            example = test.select(range(min(2, len(test)))).to_pandas()[["question", "context"]]
        elif setup.generator is not None:
            setup.generator.save(export_dir)
            gen = s.generation
            wrapper = ConditionalGenerationModel(gen.num_beams, gen.max_new_tokens, gen.length_penalty)
            example = list(test[TEXT_PAIRS[setup.kind].source][:2])
        else:
            setup.model.save_pretrained(str(export_dir))
            setup.tokenizer.save_pretrained(str(export_dir))
            if setup.kind == "ner":
                wrapper, example = NerModel(max_length=setup.max_length), [" ".join(t) for t in test["tokens"][:2]]
            else:  # served inputs are truncated like training ones
                wrapper, example = ClassificationModel(max_length=setup.max_length), list(test["text"][:2])
        return registry.register_pyfunc(wrapper, {MODEL_ARTIFACT: export_dir}, s.task, s.model, input_example=example)
