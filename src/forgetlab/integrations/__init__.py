"""forgetlab in the stack people already use: ``ForgettingCallback`` for a Hugging Face ``Trainer`` or
TRL ``SFTTrainer`` (``trainer.py``)."""
from .trainer import ForgettingCallback

__all__ = ["ForgettingCallback"]
