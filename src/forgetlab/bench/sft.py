"""Benchmark 8, instruction tuning against TRL: forgetlab's training of an instruction task and TRL's
``SFTTrainer`` with completion-only loss, on the same token ids, model, batches and optimizer.

What makes the comparison fair:

- the same data: the first task of an instruction stream (``agnews`` as questions), tokenized once by
  forgetlab's ``Formatter`` (the tokenizer's chat template); TRL gets exactly those ids as a
  pre-tokenized dataset of ``input_ids`` and ``completion_mask`` (1 on the response and the end of
  turn), from which ``completion_only_loss=True`` builds its labels: both take the mean cross-entropy
  over the same response tokens;
- the same batches in the same order: forgetlab's own draw (``epoch_batches`` with the seed
  ``train_task`` gets, length-grouped as forgetlab trains), laid out batch after batch for TRL's
  ``train_sampling_strategy="sequential"``; both right-pad with the tokenizer's pad id;
- the same model and weights: a small Llama built from a config (or ``model=`` a pretrained one,
  e.g. SmolLM2-135M-Instruct), saved once and loaded by both sides, fp32, no dropout;
- the same optimisation: fused AdamW over every parameter at ``train.lr_backbone`` with
  ``train.weight_decay`` (the optimizer is handed to TRL, since Trainer's own would spare biases and
  norms from decay), constant learning rate, no warm-up, clipping at ``train.grad_clip``; TRL's
  activation (gradient) checkpointing and bf16 (SFTConfig's defaults) off, as forgetlab trains by default.

Timed: the training call alone (forgetlab's ``train_task``, TRL's ``trainer.train()``; loading the
model, tokenizing and building the trainer are not), the sides alternating over the rounds after
one untimed run of each, the fastest round kept; every step, the first included, counts on both
sides. The figure is TRL seconds / forgetlab seconds. The first step's losses must agree (1e-4).

forgetlab's ``ResponseModel`` runs the output layer on the response positions only. TRL 1.16 fuses
its LM head too, but scores only the label positions on CUDA (Triton); elsewhere (CPU) it scores every
position in chunks, so on CPU much of the gap is the output layer at prompt positions. TRL also
computes entropy and top-1 accuracy of every step for its metrics.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from ..data.instructions import build_instruction_stream
from ..engine import Engine
from ..errors import UserError
from ..experiment import load_config
from ..models.backbones import resolve_model_path
from ..integrations.trainer import sft_dataset
from ..models.causal_lm import IGNORE_INDEX
from ..train.batching import epoch_batches
from ..train.loop import fusable, train_task
from .common import _sync, fastest

TARGET = 1.0
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SEED = 1                       # train_task's shuffling seed (as bench/loop.py)


def setting(model: str, steps: int, batch_size: int, max_length: int) -> dict:
    """forgetlab's config: one agnews instruction task of exactly ``steps`` full batches."""
    return {"seed": 0, "backbone": {"name": model, "max_length": max_length},
            "data": {"scenario": "instruction", "sequence": ["agnews"], "max_train_per_task": steps * batch_size,
                     "max_test_per_task": 1},
            "method": {"name": "seq"},
            "train": {"max_steps": steps, "batch_size": batch_size, "progress": False}}


# -- the model -----------------------------------------------------------------------------------
def chat_tokenizer(choice: str, texts: list[str]):
    """SmolLM2's tokenizer (``smollm2``; ``auto`` where it loads), else a byte-level BPE trained on
    ``texts`` with a ChatML template (``bpe``)."""
    from transformers import AutoTokenizer

    from ..models.bpe import train_bpe

    if choice in ("auto", "smollm2"):
        try:
            return AutoTokenizer.from_pretrained(resolve_model_path(SMOLLM2))
        except OSError:
            if choice == "smollm2":
                raise
    tok = train_bpe(texts, vocab_size=4096)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template, tok.eos_token = CHATML, "<|im_end|>"
    return tok


def tiny_llama(folder: Path, tokenizer, hidden: int, layers: int) -> str:
    """A randomly initialised Llama (tied embeddings, no dropout) saved with ``tokenizer`` in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                         num_key_value_heads=max(hidden // 64, 1), tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


# -- the batches ---------------------------------------------------------------------------------
def forgetlab_batches(lengths: list[int], steps: int, batch_size: int, group_by_length: bool) -> list[list[int]]:
    """The index batches ``train_task`` draws with seed ``SEED`` (one epoch of full batches)."""
    if len(lengths) != steps * batch_size:
        raise UserError(f"data: agnews has {len(lengths)} training examples here; the sft benchmark needs "
                        f"{steps} x {batch_size} (FORGETLAB_DATA_DIR)")
    generator = torch.Generator().manual_seed(SEED)
    return [b.tolist() for b in epoch_batches(len(lengths), batch_size, generator, lengths if group_by_length else None)]


# -- the benchmark -------------------------------------------------------------------------------
def run(quick: bool = False, model: str | None = None, tokenizer: str = "auto", batch_size: int = 8,
        steps: int | None = None, max_length: int = 128, hidden: int = 256, layers: int = 4,
        rounds: int | None = None) -> dict:
    """Time both sides; ``model`` a pretrained causal LM, else a Llama of ``hidden`` x ``layers``
    with ``tokenizer``'s vocabulary."""
    steps = steps or (5 if quick else 20)
    rounds = rounds or (1 if quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            data = load_config(setting("x", steps, batch_size, max_length)).data
            stream = build_instruction_stream(data, 0)
            texts = [e.prompt + " " + e.response for e in stream.tasks[0].train_examples]
            source = tiny_llama(Path(tmp) / "model", chat_tokenizer(tokenizer, texts), hidden, layers)
        else:
            source = model
        return compare(load_config(setting(source, steps, batch_size, max_length)), rounds, tmp,
                       model or f"Llama {hidden}x{layers} (random)")


def compare(cfg, rounds: int, workdir: str, name: str) -> dict:
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    engine = Engine(cfg)
    learner, method, task, device = engine.learner, engine.method, engine.stream.tasks[0], engine.device
    learner.begin_task(task)
    method.before_task(task)
    inputs = method.training_inputs(task, [task])
    train = cfg.train
    batches = forgetlab_batches([len(t) for t in inputs.tokens], train.max_steps, train.batch_size,
                                train.group_by_length)
    dataset = sft_dataset(inputs.tokens, inputs.targets, batches)
    initial = copy.deepcopy(learner.state_dict())
    template = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.backbone.name), dtype=torch.float32)
    quiet = Console(quiet=True)
    losses: dict[str, list[torch.Tensor]] = {}
    finals: dict[str, dict] = {}
    times: dict[str, list[float]] = {"forgetlab": [], "trl": []}

    class RecordingSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses["trl"].append((out[0] if return_outputs else out).detach())
            return out

    step_loss = method.loss

    def recording_loss(batch, out):
        loss = step_loss(batch, out)
        losses["forgetlab"].append(loss.detach())
        return loss

    method.loss = recording_loss

    def ours() -> float:
        learner.load_state_dict(initial)
        losses["forgetlab"] = []
        _sync(device)
        start = time.perf_counter()
        train_task(learner, method, inputs, train, seed=SEED, device=device, pad_id=learner.backbone.pad_id,
                   label="bench", console=quiet)
        _sync(device)
        seconds = time.perf_counter() - start
        finals["forgetlab"] = {k: v.detach().clone() for k, v in learner.backbone.model.state_dict().items()}
        return seconds

    def theirs() -> float:
        lm = copy.deepcopy(template).to(device)
        params = list(lm.parameters())
        optimizer = torch.optim.AdamW(params, lr=train.lr_backbone, weight_decay=train.weight_decay,
                                      fused=fusable([{"params": params}]))
        args = SFTConfig(output_dir=workdir, max_steps=train.max_steps, per_device_train_batch_size=train.batch_size,
                         learning_rate=train.lr_backbone, weight_decay=train.weight_decay,
                         max_grad_norm=train.grad_clip or 0.0, lr_scheduler_type="constant", warmup_steps=0,
                         train_sampling_strategy="sequential", completion_only_loss=True, max_length=None,
                         activation_checkpointing=False, bf16=False, use_cpu=device.type == "cpu", seed=cfg.seed,
                         report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True)
        trainer = RecordingSFTTrainer(model=lm, args=args, train_dataset=dataset,
                                      processing_class=learner.backbone.tokenizer, optimizers=(optimizer, None))
        trainer.remove_callback(PrinterCallback)    # no metrics printed at the end
        losses["trl"] = []
        _sync(device)
        start = time.perf_counter()
        trainer.train()
        _sync(device)
        seconds = time.perf_counter() - start
        if trainer.state.global_step != train.max_steps:
            raise RuntimeError(f"TRL took {trainer.state.global_step} steps, forgetlab {train.max_steps}")
        finals["trl"] = lm.model.state_dict()
        return seconds

    sides = {"forgetlab": ours, "trl": theirs}
    for r in range(rounds + 1):                     # round 0: one untimed run of each side
        for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            seconds = sides[side]()
            if r:
                times[side].append(seconds)
    method.loss = step_loss
    first = {side: float(losses[side][0]) for side in sides}
    gap = max((finals["forgetlab"][k].float() - finals["trl"][k].float()).abs().max().item() for k in finals["trl"])
    diff = abs(first["forgetlab"] - first["trl"])
    steps = train.max_steps
    ours_s, theirs_s = fastest(times["forgetlab"]) / steps, fastest(times["trl"]) / steps
    ratio = theirs_s / ours_s
    padded = [len(b) * max(len(inputs.tokens[i]) for i in b) for b in batches]
    real = [sum(len(inputs.tokens[i]) for i in b) for b in batches]
    scored = [sum(t != IGNORE_INDEX for i in b for t in inputs.targets[i][1:]) for b in batches]
    tokens = sum(padded) / len(padded)
    return {"name": "sft", "figure": ratio, "target": f">= {TARGET}", "met": ratio >= TARGET,
            "forgetlab_s_per_step": ours_s, "trl_s_per_step": theirs_s,
            "first_step_loss": first, "first_step_loss_diff": diff, "loss_equal": diff <= 1e-4,
            "losses": {side: [float(x) for x in losses[side]] for side in sides},
            "max_weight_difference": gap, "steps": steps, "batch_size": train.batch_size, "rounds": rounds,
            "tokens_per_batch": {"padded": tokens, "real": sum(real) / len(real), "response": sum(scored) / len(scored)},
            "times": times, "device": device.type,
            "setting": f"{name}, agnews instructions, batch {train.batch_size}, {steps} steps, "
                       f"{tokens:.0f} tokens per padded batch ({sum(scored) / len(scored):.0f} scored), {device.type}; "
                       f"against TRL SFTTrainer (completion-only loss); first-step losses differ by {diff:.1e}",
            "notes": [
                ("times: the training call alone, fastest of the alternating rounds after one untimed run of each "
                 "side, divided by the steps (the first step counted on both sides)"),
                ("forgetlab runs the output layer at response positions only; TRL 1.16's fused LM head does so on "
                 "CUDA (Triton) but scores every position (in chunks) elsewhere, and also computes entropy and "
                 "top-1 accuracy every step"),
                ("same ids, batches (forgetlab's draw, fed to TRL in order), weights, fused AdamW, constant lr, "
                 "clipping; max_weight_difference: the largest gap between the two sides' final weights")]}
