"""Joint (multi-task) training: at each task, train on the data of every task seen so far.

The upper bound that forgetting is measured against; the model keeps training from where the
previous task left it.
"""
from ..errors import UserError
from ..train.batching import Inputs
from .base import Method, MethodConfig


class JointConfig(MethodConfig):
    freeze_backbone: bool = False


class Joint(Method):
    name = "joint"
    sharded = True
    Config = JointConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        if cfg.freeze_backbone and not learner.own_parameters():
            raise UserError("method.freeze_backbone: a frozen backbone leaves this learner nothing to train "
                            "(its output layer is the backbone's, as a language model's)")

    def before_task(self, task):
        if task.index == 0 and self.cfg.freeze_backbone:
            self.learner.freeze_backbone()

    def training_inputs(self, task, seen):
        return Inputs.concat([self.ctx.inputs(t, "train") for t in seen])
