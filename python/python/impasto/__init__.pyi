from os import PathLike
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union

import numpy as np
import numpy.typing as npt

Image = TypeVar("Image", npt.NDArray[np.uint8], Any)
StrPath = Union[str, "PathLike[str]"]

class ImpastoError(Exception): ...
class ModelError(ImpastoError): ...

def styles() -> List[str]: ...
def read_image(path: StrPath) -> npt.NDArray[np.uint8]: ...
def decode_image(data: bytes, name: str = ...) -> npt.NDArray[np.uint8]: ...
def write_image(path: StrPath, image: npt.NDArray[np.uint8]) -> None: ...
def plan_batch(
    inputs: list[str],
    output: str | None = ...,
    format: str | None = ...,
    overwrite_inputs: bool = ...,
    follow_links: bool = ...,
) -> tuple[list[tuple[str, str]], list[str], list[str], list[str]]: ...
def evaluate(
    model: StrPath,
    style: StrPath,
    photos: StrPath,
    vgg: Optional[StrPath] = ...,
    image_size: Optional[int] = ...,
    style_size: Optional[int] = ...,
    margin: Optional[int] = ...,
    device: Optional[str] = ...,
) -> Dict[str, Any]: ...

def train(
    style: Union[StrPath, Sequence[StrPath], Dict[str, StrPath]],
    data: StrPath,
    output: StrPath,
    steps: Optional[int] = ...,
    epochs: Optional[int] = ...,
    batch_size: Optional[int] = ...,
    image_size: int = ...,
    style_size: int = ...,
    lr: Optional[float] = ...,
    content_weight: Optional[float] = ...,
    style_weight: Optional[float] = ...,
    tv_weight: Optional[float] = ...,
    arch: str = ...,
    seed: Optional[int] = ...,
    checkpoint_every: Optional[int] = ...,
    val: Optional[StrPath] = ...,
    resume: bool = ...,
    vgg: Optional[StrPath] = ...,
    half: bool = ...,
    on_progress: Optional[Callable[[Dict[str, float]], Any]] = ...,
    device: Optional[str] = ...,
    base: Optional[StrPath] = ...,
    exact: bool = ...,
    style_weights: Optional[Dict[str, float]] = ...,
    balance: bool = ...,
    fast: Optional[bool] = ...,
) -> Dict[str, Any]: ...

def devices() -> Dict[str, Any]: ...

class Model:
    def __init__(self, style: StrPath, device: Optional[str] = ...) -> None: ...
    @property
    def device(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def parameters(self) -> int: ...
    def stylize(
        self,
        image: Image,
        strength: float = ...,
        preserve_color: bool = ...,
        max_size: Optional[int] = ...,
    ) -> Image: ...
    def stylize_batch(
        self,
        images: Sequence[Image],
        strength: float = ...,
        preserve_color: bool = ...,
        max_size: Optional[int] = ...,
    ) -> List[Image]: ...
