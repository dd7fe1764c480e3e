"""Model zoo: ``convsnn``, ``cifar10net``, ``vgg16``, ``resnet19``, registered in :data:`MODELS` (see
:mod:`rccsnn.models.registry` for what an architecture takes) and built with :func:`build_model`.
"""
from __future__ import annotations

# Importing the architectures registers them.
from rccsnn.models import cifar10net, convsnn, resnet, vgg  # noqa: F401
from rccsnn.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
