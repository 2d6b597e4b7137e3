"""Pure model code: architectures and the deterministic training loop."""
from .nets import MODEL_KINDS, build_model
from .training import Checkpoint, TrainConfig, TrainResult, predict_logits, train_model

__all__ = ["MODEL_KINDS", "build_model", "Checkpoint", "TrainConfig", "TrainResult",
           "predict_logits", "train_model"]
