from os import PathLike
from typing import Any, Dict, List, Optional, Sequence, TypeVar, Union

import numpy as np
import numpy.typing as npt

Image = TypeVar("Image", npt.NDArray[np.uint8], Any)
StrPath = Union[str, "PathLike[str]"]

class ImpastoError(Exception): ...
class ModelError(ImpastoError): ...

def styles() -> List[str]: ...
def read_image(path: StrPath) -> npt.NDArray[np.uint8]: ...
def evaluate(
    model: StrPath,
    style: StrPath,
    photos: StrPath,
    vgg: Optional[StrPath] = ...,
    image_size: int = ...,
    style_size: int = ...,
    margin: int = ...,
) -> Dict[str, Any]: ...

class Model:
    def __init__(self, style: StrPath) -> None: ...
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
