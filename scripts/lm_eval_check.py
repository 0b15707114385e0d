"""The check of docs/integrations.md: the built-in MMLU scorer (qa_accuracy) against lm-evaluation-harness,
through forgetlab's adapter and through the harness's own HFLM, on the first N MMLU val items.

    FORGETLAB_DATA_DIR=../shared/data python scripts/lm_eval_check.py 100
"""
import os
import sys
import time

os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
import torch
from transformers import AutoModelForCausalLM
from forgetlab.config import BackboneConfig, GeneralConfig
from forgetlab.eval.retention import qa_accuracy, qa_items
from forgetlab.models.backbones import build_backbone
from forgetlab.models.offline import offline_path
from forgetlab.eval.lm_eval_backend import BackboneLM, HarnessTasks
from lm_eval.evaluator import evaluate
from lm_eval.models.huggingface import HFLM

N, cpu = int(sys.argv[1]), torch.device("cpu")
torch.set_num_threads(2)
bb = build_backbone(BackboneConfig(name="HuggingFaceTB/SmolLM2-135M-Instruct", max_length=256)).eval()
t = time.time(); builtin = qa_accuracy(bb, qa_items("mmlu", "val", N), 256, cpu); tb = time.time() - t
harness = HarnessTasks(GeneralConfig(tasks=["mmlu_local"], include_path="examples/lm_eval", limit=N, max_length=256))
t = time.time(); out = evaluate(lm=BackboneLM(bb, cpu, 256, 32), task_dict=harness.loaded, limit=N, bootstrap_iters=0, log_samples=True); ta = time.time() - t
adapter = out["results"]["mmlu_local"]["acc,none"]
ours = [max(range(len(s["filtered_resps"])), key=lambda k: s["filtered_resps"][k][0]) for s in sorted(out["samples"]["mmlu_local"], key=lambda s: s["doc_id"])]
hf = AutoModelForCausalLM.from_pretrained(offline_path("HuggingFaceTB/SmolLM2-135M-Instruct")).eval()
t = time.time(); out2 = evaluate(lm=HFLM(pretrained=hf, tokenizer=bb.tokenizer, batch_size=8), task_dict=harness.loaded, limit=N, bootstrap_iters=0, log_samples=True); th = time.time() - t
theirs = [max(range(len(s["filtered_resps"])), key=lambda k: s["filtered_resps"][k][0]) for s in sorted(out2["samples"]["mmlu_local"], key=lambda s: s["doc_id"])]
hflm = out2["results"]["mmlu_local"]["acc,none"]
print(f"N={N} builtin qa_accuracy {builtin:.4f} ({tb:.1f}s)  harness+BackboneLM {adapter:.4f} ({ta:.1f}s)  harness+HFLM {hflm:.4f} ({th:.1f}s)")
print(f"items where HFLM's choice differs from the adapter's: {sum(a != b for a, b in zip(ours, theirs))}/{N}")
