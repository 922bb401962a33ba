"""Export stand-in for the Wav2Lip generator: each skip's share of the next layer, once per face.

Every decoder stage of `models.wav2lip.Wav2Lip` concatenates the frame's features with an
identity feature and feeds the result to a convolution (a transposed one in the upsampling
stages, a 3x3 one in the output block). A convolution is linear in its input channels, so

    conv(cat[x, skip]) = conv_x(x) + conv_skip(skip),

where ``conv_x`` and ``conv_skip`` hold the weight's columns for ``x`` and for ``skip``. The
identity features are the same for every frame of a face, so ``conv_skip(skip)`` is computed
once per face and call and added to every frame, instead of once per frame. In the lite preset
the skips carry a third to a half of those layers' input channels. The eval-mode batch norm
after each of these layers is folded into the split weights.

The speech graphs (`export.onnx`) are traced with this stand-in in place of the generator. The
PyTorch backend runs the network as written, so the export's parity check compares the two
forms of the computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.wav2lip import ConvBlock, ConvTransposeBlock, Wav2Lip


def _folded(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The conv's weight and bias with the eval-mode batch norm after it folded in.

    Returns the weight in the conv's own layout, scaled per output channel, and the bias (cout,).
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("folding a batch norm needs its running statistics")
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (cout,)
    shift = norm.bias - norm.running_mean * scale
    bias = shift if conv.bias is None else conv.bias * scale + shift
    if isinstance(conv, nn.ConvTranspose2d):  # weight (cin, cout, kh, kw)
        weight = conv.weight * scale[None, :, None, None]
    else:  # weight (cout, cin, kh, kw)
        weight = conv.weight * scale[:, None, None, None]
    return weight.detach().clone(), bias.detach().clone()


class SkipSplitConv(nn.Module):
    """``relu(bn(conv(cat[x, skip])))`` with the skip's share computed once per item.

    ``x`` (B * T, cx, h, w) holds T frames per item, batch-major; ``skip`` (B, cs, h, w) holds
    one identity feature per item. Returns (B * T, cout, h', w'), as the block it replaces.
    """

    weight_x: Tensor
    weight_skip: Tensor
    bias: Tensor

    def __init__(self, block: ConvBlock | ConvTransposeBlock, x_channels: int) -> None:
        super().__init__()
        conv, norm = block.conv_block[0], block.conv_block[1]
        if not isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) or not isinstance(
            norm, nn.BatchNorm2d
        ):
            raise TypeError(f"expected a conv and a batch norm, got {type(conv)}, {type(norm)}")
        if isinstance(block, ConvBlock) and block.residual:
            raise ValueError("a residual block's input is not a concatenation")
        weight, bias = _folded(conv, norm)
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        in_axis = 0 if self.transposed else 1
        if not 0 < x_channels < weight.shape[in_axis]:
            raise ValueError(f"x_channels {x_channels} must split {weight.shape[in_axis]} inputs")
        x_part, skip_part = weight.split([x_channels, weight.shape[in_axis] - x_channels], in_axis)
        self.register_buffer("weight_x", x_part.contiguous())
        self.register_buffer("weight_skip", skip_part.contiguous())
        self.register_buffer("bias", bias)
        if isinstance(conv.padding, str):
            raise ValueError(f"expected numeric padding, got {conv.padding!r}")
        self.stride = conv.stride
        self.padding = conv.padding
        self.output_padding = conv.output_padding if isinstance(conv, nn.ConvTranspose2d) else 0

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.transposed:
            return F.conv_transpose2d(
                x, weight, bias, self.stride, self.padding, self.output_padding
            )
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def forward(self, x: Tensor, skip: Tensor, frames_per_item: int) -> Tensor:
        frames = self._conv(x, self.weight_x, self.bias)  # (B * T, cout, h', w')
        shared = self._conv(skip, self.weight_skip, None)  # (B, cout, h', w')
        per_item = frames.unflatten(0, (skip.shape[0], frames_per_item)) + shared[:, None]
        return F.relu(per_item.flatten(0, 1))


class SkipSplitWav2Lip(Wav2Lip):
    """`Wav2Lip` whose `decode` adds each identity skip's share once per item (module docstring).

    Built from a trained generator in eval mode; shares its speech encoder and the decoder's
    residual blocks, and holds folded copies of the layers that read a skip. The identity
    encoder is shared as well, but the stand-in is meant for the speech graphs, which take the
    identity pyramid as input.
    """

    def __init__(self, generator: Wav2Lip) -> None:
        nn.Module.__init__(self)  # share the trained modules rather than building fresh ones
        if generator.training:
            raise ValueError("fold a generator in eval mode: batch norm must use running stats")
        self.config = generator.config
        self.face_encoder_blocks = generator.face_encoder_blocks
        self.audio_encoder = generator.audio_encoder
        self.face_decoder_blocks = generator.face_decoder_blocks
        self.output_block = generator.output_block
        stages = list(generator.face_decoder_blocks)
        entry_channels = [self._out_channels(stage) for stage in stages]
        split = []
        for stage, x_channels in zip(stages[1:], entry_channels[:-1], strict=True):
            first = next(stage.children())
            if not isinstance(first, ConvTransposeBlock):
                raise TypeError(f"an upsampling stage starts with a transposed conv, got {first}")
            split.append(SkipSplitConv(first, x_channels))
        self.upsample = nn.ModuleList(split)
        head = generator.output_block[0]
        if not isinstance(head, ConvBlock):
            raise TypeError(f"the output block starts with a conv block, got {head}")
        self.output_head = SkipSplitConv(head, entry_channels[-1])
        self.eval()

    @staticmethod
    def _out_channels(stage: nn.Module) -> int:
        """Output channels of a decoder stage: those of its last conv."""
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        last = convs[-1]
        return last.out_channels

    def decode(
        self, audio_embedding: Tensor, identity: list[Tensor], frames_per_item: int
    ) -> Tensor:
        """`Wav2Lip.decode`, same arguments and result, with the skips' shares once per item."""
        num_rows = audio_embedding.shape[0]
        batch = identity[0].shape[0]
        if num_rows != batch * frames_per_item:
            raise ValueError(
                f"decode got {num_rows} speech codes for {batch} faces x {frames_per_item} frames"
            )
        skips = identity[::-1]  # deepest first, as the stages read them
        x = self.face_decoder_blocks[0](audio_embedding)  # (N, embed_dim, 1, 1)
        for index, split in enumerate(self.upsample):
            x = split(x, skips[index], frames_per_item)
            for residual in list(self.face_decoder_blocks[index + 1].children())[1:]:
                x = residual(x)
        x = self.output_head(x, skips[-1], frames_per_item)  # (N, output_hidden, S, S)
        for layer in list(self.output_block)[1:]:
            x = layer(x)
        return x  # (N, 3, S, S)
