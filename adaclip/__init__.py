"""AdaCLIP: zero-shot visual anomaly detection with hybrid learnable prompts on CLIP.

Build a :class:`Detector` once and call it on images::

    from adaclip import Detector
    detector = Detector.from_pretrained("all")
    prediction = detector.predict("part.png", class_name="screw")
    prediction.score, prediction.anomaly_map
"""

from adaclip.backbone import load_backbone
from adaclip.checkpoint_io import read_state, save_checkpoint
from adaclip.checkpoints import CHECKPOINTS, PublishedCheckpoint, resolve_checkpoint
from adaclip.config import AdaCLIPConfig
from adaclip.detector import Detector, Failure, Prediction
from adaclip.errors import AdaCLIPError, CheckpointError, ClassNameError, HubError, ImageError
from adaclip.images import load_image
from adaclip.model import AdaCLIP

__all__ = [
    "CHECKPOINTS",
    "AdaCLIP",
    "AdaCLIPConfig",
    "AdaCLIPError",
    "CheckpointError",
    "ClassNameError",
    "Detector",
    "Failure",
    "HubError",
    "ImageError",
    "Prediction",
    "PublishedCheckpoint",
    "load_backbone",
    "load_image",
    "read_state",
    "resolve_checkpoint",
    "save_checkpoint",
]

__version__ = "0.1.0"
