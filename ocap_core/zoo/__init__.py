"""The model zoo (imports torch). Importing this package registers every architecture."""

from . import cnn, mobilenetv2, resnet, vgg  # noqa: F401  (registration side effect of the zoo itself)
from .registry import ArchConfig, create_model, get_config, list_archs, load_user_class, register_model

__all__ = ["ArchConfig", "create_model", "get_config", "list_archs", "load_user_class", "register_model"]
