"""The frozen settings of an AdaCLIP model, with a JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from adaclip.errors import AdaCLIPError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class AdaCLIPConfig:
    """Everything that fixes AdaCLIP's numbers apart from the weights.

    Attributes:
        image_size: Side ``S`` of the square network input in pixels.
        prompt_depth: Number of leading blocks ``J`` that receive prompts.
        prompt_length: Number of prompt tokens ``M`` per block.
        hsf_clusters: Number of K-means clusters ``K`` in hybrid semantic fusion.
        hsf_topk_factor: HSF clusters the ``hsf_topk_factor * K`` most abnormal patches.
        hsf_alpha: Weight of the fused patch feature in the final image feature.
        use_hsf: Whether hybrid semantic fusion refines the image feature.
        kmeans_seed: Random state of the fusion K-means; fixed so scores are repeatable.
        logit_scale: Temperature applied to cosine similarities before the softmax.
        map_sigma: Sigma in pixels (at ``image_size``) of the Gaussian that smooths the map.
        num_output_layers: How many evenly spaced vision blocks feed the patch heads.
    """

    image_size: int = 518
    prompt_depth: int = 4
    prompt_length: int = 5
    hsf_clusters: int = 20
    hsf_topk_factor: int = 5
    hsf_alpha: float = 0.2
    use_hsf: bool = True
    kmeans_seed: int = 0
    logit_scale: float = 100.0
    map_sigma: float = 4.0
    num_output_layers: int = 4

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise AdaCLIPError(f"image_size must be at least 16 pixels; got {self.image_size}.")
        if not 1 <= self.prompt_length <= 20:
            raise AdaCLIPError(f"prompt_length must be between 1 and 20; got {self.prompt_length}.")
        if self.prompt_depth < 1:
            raise AdaCLIPError(f"prompt_depth must be at least 1; got {self.prompt_depth}.")
        if not 0.0 <= self.hsf_alpha <= 1.0:
            raise AdaCLIPError(f"hsf_alpha must lie in [0, 1]; got {self.hsf_alpha}.")
        for name in ("hsf_clusters", "hsf_topk_factor", "num_output_layers"):
            if getattr(self, name) < 1:
                raise AdaCLIPError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if not (self.map_sigma >= 0.0 and self.logit_scale > 0.0):  # also refuses NaN
            raise AdaCLIPError(
                f"map_sigma must be at least 0 and logit_scale above 0; got {self.map_sigma} "
                f"and {self.logit_scale}."
            )

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Returns the settings as an indented JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdaCLIPConfig:
        """Builds a config from a dict, refusing keys it does not know."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AdaCLIPError(
                f"unknown AdaCLIPConfig keys {unknown}; known keys are {sorted(known)}."
            )
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> AdaCLIPConfig:
        """Parses the output of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))
