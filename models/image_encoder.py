"""psi_IE: encodes the generated talking-head frames into image features I (one per frame)."""

from __future__ import annotations

from torch import Tensor, nn

from models.blendshapes import FPS
from models.config import ImageEncoderConfig
from models.local_attention import band_bias

# Kernel of the depthwise temporal convolution that gives the transformer relative positions.
POSITION_KERNEL_FRAMES = 9


class FrameCNN(nn.Module):
    """The 2D CNN shared across frames: (N, 3, H, W) -> (N, hidden)."""

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in cfg.cnn_channels:
            layers += [
                nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(cin, cfg.hidden_size)

    def forward(self, frames: Tensor) -> Tensor:
        x = self.body(frames)  # (N, C, h, w)
        x = self.pool(x).flatten(1)  # (N, C)
        return self.proj(x)  # (N, hidden)


class ImageEncoder(nn.Module):
    """Frames V (B, T, 3, H, W) -> image features I (B, T, hidden).

    Positions enter through a depthwise convolution over time rather than absolute
    embeddings, so a streaming window and the whole clip encode a frame alike.
    """

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cnn = FrameCNN(cfg)
        self.position = nn.Conv1d(
            cfg.hidden_size,
            cfg.hidden_size,
            kernel_size=POSITION_KERNEL_FRAMES,
            padding=POSITION_KERNEL_FRAMES // 2,
            groups=cfg.hidden_size,
        )
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.hidden_size,
            nhead=cfg.num_heads,
            dim_feedforward=cfg.intermediate_size,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, num_layers=cfg.num_layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(cfg.hidden_size)

    @property
    def output_dim(self) -> int:
        return self.cfg.hidden_size

    def forward(self, video: Tensor) -> Tensor:
        return self.sequence(self.frame_features(video))

    def frame_features(self, video: Tensor) -> Tensor:
        """The per-frame part: each frame (B, T, 3, H, W) through the CNN alone -> (B, T,
        hidden). A frame's features depend on that frame only, so a stream may compute them
        once and carry them into later windows (`models.streaming.window_step`)."""
        batch, frames = video.shape[:2]
        if self.cfg.lower_half_only:
            video = video[..., video.shape[-2] // 2 :, :]  # mouth half: (B, T, 3, H/2, W)
        return self.cnn(video.flatten(0, 1)).view(batch, frames, -1)  # (B, T, hidden)

    def sequence(self, x: Tensor) -> Tensor:
        """The part across frames: per-frame features (B, T, hidden) -> image features."""
        x = x + self.position(x.transpose(1, 2)).transpose(1, 2)
        mask = None
        if self.cfg.attention_span_s is not None:  # a band around each frame (streamable)
            left, right = (round(s * FPS) for s in self.cfg.attention_span_s)
            mask = band_bias(x.shape[1], left, right, x)[0, 0]  # (T, T) additive
        # is_causal given: else PyTorch compares the mask with a causal one, a data-dependent
        # check that torch.export (the ONNX export) cannot trace.
        return self.norm(self.transformer(x, mask=mask, is_causal=False))  # (B, T, hidden)
