"""Contract flags that repeat an input: an error naming the flag, never "the last one wins"."""

from __future__ import annotations

import pytest

from edgetl.contract import parse_flags
from edgetl.errors import ConfigError


@pytest.mark.parametrize(("kw", "said"), [
    ({"inputs": ["state:2xNx32", "audio:Nx256", "state:2xNx16"]}, "--input gives input state more than once"),
    ({"inputs": ["1x3x8x8", "1x3x16x16"]}, "--input gives input (unnamed) more than once"),
    ({"opt_shapes": ["image:1x3x32x32", "image:1x3x64x64"]}, "--opt-shape gives input image more than once"),
    ({"max_shapes": ["image:1x3x64x64", "image:1x3x96x96"]}, "--max-shape gives input image more than once"),
])
def test_an_input_given_twice_is_refused(kw, said):
    with pytest.raises(ConfigError, match=said.replace("(", r"\(").replace(")", r"\)")):
        parse_flags(**kw)


def test_each_input_once_parses():
    flags = parse_flags(inputs=["audio:Nx256", "state:2xNx32"], opt_shapes=["audio:1x256"],
                        max_shapes=["audio:4x256"])
    assert [f.name for f in flags.inputs] == ["audio", "state"]
