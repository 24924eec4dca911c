"""Model architectures, chosen by name (BasicSR-style registry); torch is imported only when a model is built.

=========================  ============================================================================
name                       architecture
=========================  ============================================================================
``enhancer``               context-conditioned residual-attention / multi-scale super-resolution generator
``enhancer-discriminator`` hybrid discriminator D = α·D_patch + β·D_global
``se-classifier``          CNN with Squeeze-and-Excitation blocks (quality triage, lesion vs no lesion)
``dcgan-generator``        hybrid GAN stage 1: coarse images from N(0, 1) noise
``cgan-generator``         hybrid GAN stage 2: label- and image-conditioned generator
``cgan-discriminator``     hybrid GAN stage 2: discriminator on (image, condition) pairs
``srgan-generator``        hybrid GAN stage 4: super-resolution refinement
=========================  ============================================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

ARCHITECTURES: dict[str, str] = {
    "enhancer": "gan.models.enhancer:ContextEnhancer",
    "enhancer-discriminator": "gan.models.enhancer:HybridDiscriminator",
    "se-classifier": "gan.models.classifier:SEClassifier",
    "dcgan-generator": "gan.models.hybrid:DCGANGenerator",
    "cgan-generator": "gan.models.hybrid:ConditionalGenerator",
    "cgan-discriminator": "gan.models.hybrid:PairDiscriminator",
    "srgan-generator": "gan.models.hybrid:SRGenerator",
}


def architecture(name: str) -> type[nn.Module]:
    """The class registered under ``name``."""
    try:
        module, cls = ARCHITECTURES[name].split(":")
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return getattr(importlib.import_module(module), cls)


def build(name: str, **config: Any) -> nn.Module:
    """Instantiate the architecture ``name`` with ``config`` (its constructor's keyword arguments)."""
    return architecture(name)(**config)
