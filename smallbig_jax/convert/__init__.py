"""Weight conversion between the official PyTorch SmallBigNet / torchvision ResNets and this package.

By direction: `pth` reads and writes `.pth` files, `official` converts official checkpoints (import and export),
`imagenet` inflates torchvision ResNets; `keys` maps the names, `state` writes arrays into a model, `checkpoint`
keeps converted checkpoints on disk and `pretrained` starts training from any of them. torch is imported lazily
inside the functions that read or write `.pth` files.
"""

from smallbig_jax.convert.checkpoint import (
    CheckpointFormatError,
    load_converted_model,
    load_converted_state,
    save_converted,
)
from smallbig_jax.convert.imagenet import inflate_imagenet, inflate_imagenet_pth
from smallbig_jax.convert.keys import KeySpec, key_table, torch_module_name, torch_state_dict_shapes
from smallbig_jax.convert.official import (
    convert_pth,
    export_state_dict,
    infer_config,
    save_pth,
    state_dict_to_model,
    validate_state_dict,
)
from smallbig_jax.convert.pretrained import init_from
from smallbig_jax.convert.pth import extract_state_dict, load_pth
from smallbig_jax.errors import ConversionError

__all__ = [
    "CheckpointFormatError",
    "ConversionError",
    "KeySpec",
    "convert_pth",
    "export_state_dict",
    "extract_state_dict",
    "infer_config",
    "inflate_imagenet",
    "inflate_imagenet_pth",
    "init_from",
    "key_table",
    "load_converted_model",
    "load_converted_state",
    "load_pth",
    "save_converted",
    "save_pth",
    "state_dict_to_model",
    "torch_module_name",
    "torch_state_dict_shapes",
    "validate_state_dict",
]
