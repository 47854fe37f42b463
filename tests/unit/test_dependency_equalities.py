"""Declared dependencies that replaced hand-written code, each with the equality that allowed it: the code it
replaced is kept here, verbatim, as the reference (docs/architecture.md, "Dependencies").

* ``einops.rearrange`` in the DiT's patchify / unpatchify and attention head split: pure permutations, so
  equal bit for bit; the token order (and so the meaning of every saved weight) is unchanged.
* ``torchvision.utils.make_grid`` in :func:`latent_flow.utils.images.make_grid_image`: the same pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latent_flow.backbones import DiT
from latent_flow.backbones.dit import Attention
from latent_flow.utils.images import make_grid_image, to_uint8


# ------------------------------------------------------------------------------ the replaced code, verbatim
def patchify_by_hand(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify_by_hand(tokens: torch.Tensor, p: int) -> torch.Tensor:
    b, n, d = tokens.shape
    g = int(round(n**0.5))
    c = d // (p * p)
    x = tokens.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, g * p, g * p)


def heads_by_hand(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, ...]:
    b, n, three_d = qkv.shape
    return qkv.reshape(b, n, 3, num_heads, three_d // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)


def merge_heads_by_hand(out: torch.Tensor) -> torch.Tensor:
    b, heads, n, hd = out.shape
    return out.transpose(1, 2).reshape(b, n, heads * hd)


def make_grid_by_hand(images: torch.Tensor, nrow: int, *, padding: int = 2, upscale: int = 1) -> Image.Image:
    arr = to_uint8(images)
    count, height, width, _ = arr.shape
    ncol = nrow
    rows = (count + ncol - 1) // ncol
    grid = np.full((rows * (height + padding) + padding, ncol * (width + padding) + padding, 3), 255, dtype=np.uint8)
    for k in range(count):
        r, c = divmod(k, ncol)
        y, x = padding + r * (height + padding), padding + c * (width + padding)
        grid[y : y + height, x : x + width] = arr[k]
    img = Image.fromarray(grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    return img


# ------------------------------------------------------------------------------ equalities
@pytest.mark.parametrize("channels, size, patch", [(4, 8, 2), (3, 16, 4), (8, 4, 1), (2, 12, 3)])
def test_patchify_and_unpatchify_equal_the_hand_written_reshapes(channels, size, patch):
    model = DiT(
        input_size=size,
        patch_size=patch,
        in_channels=channels,
        out_channels=channels,
        hidden_size=12,
        depth=1,
        num_heads=2,
        num_classes=0,
    )
    x = torch.randn(3, channels, size, size)
    tokens = model.patchify(x)
    assert torch.equal(tokens, patchify_by_hand(x, patch))
    assert torch.equal(model.unpatchify(tokens), unpatchify_by_hand(tokens, patch))


def test_attention_head_split_equals_the_hand_written_reshape():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4)
    x = torch.randn(2, 9, 16)
    q, k, v = heads_by_hand(attn.qkv(x), 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attn(x), attn.proj(merge_heads_by_hand(out)))
    # the saved layout: the same parameter names and shapes as before
    assert {k: tuple(v.shape) for k, v in attn.state_dict().items()} == {
        "qkv.weight": (48, 16),
        "qkv.bias": (48,),
        "proj.weight": (16, 16),
        "proj.bias": (16,),
    }


@pytest.mark.parametrize("count, nrow, padding, upscale", [(6, 3, 2, 1), (7, 3, 2, 4), (2, 5, 2, 1), (4, 4, 0, 2)])
def test_make_grid_image_equals_the_hand_written_grid(count, nrow, padding, upscale):
    images = torch.rand(count, 3, 10, 12, generator=torch.Generator().manual_seed(count)) * 2.4 - 1.2
    ours = make_grid_image(images, nrow, padding=padding, upscale=upscale)
    reference = make_grid_by_hand(images, nrow, padding=padding, upscale=upscale)
    assert ours.size == reference.size
    assert np.array_equal(np.asarray(ours), np.asarray(reference))
