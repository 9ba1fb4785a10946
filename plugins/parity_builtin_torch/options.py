"""The options the ``torch*`` sources read, declared once (see :attr:`parity.contract.source.Source.option_schema`)."""
from __future__ import annotations

from parity.contract.options import Option
from parity.lib.options import LOADING

OPTIONS: tuple[Option, ...] = (
    *LOADING,
    Option("torch_capture", "choice", "auto", "how layers are captured: module hooks, the fx graph, or auto "
           "(modules, fx when hooks cannot see the model)", choices=("auto", "modules", "fx"), flag="--torch-capture"),
    Option("torch_include_integer", "bool", False, "also capture integer and bool tensors"),
    Option("torch_allow_tf32", "bool", False, "let an fp32 model on CUDA use TF32 matrix products"),
)
