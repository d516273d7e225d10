"""Week 6: a small convolutional image tower that fits into `CLIPModel` in place of its ViT, to train
both with the same contrastive recipe and compare (`python -m stage2_fundamentals.infonce_lab towers`).

Four stride-2 3×3 convolutions take a 64 px image to a 4×4 grid of feature vectors, the same grid
the tiny ViT's 16 px patches make; CLIP's ResNets pool the grid into one vector (attention pooling
there, a mean here), which the visual projection maps into the shared space:

    h_0 = pixels       h_l = GELU(GroupNorm(conv_l(h_{l-1})))     (stride 2: 64 → 32 → 16 → 8 → 4)
    pooled = LayerNorm(mean over the 4×4 positions of h_4)

It returns what `CLIPModel` reads from a vision tower: `pooler_output`, the pooled vector, and
`last_hidden_state`, the grid flattened into 16 tokens (a language model can only cross-attend
to a CNN after this flattening; a ViT's output is tokens already).
"""
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling


class ConvTower(nn.Module):
    def __init__(self, hidden=64, widths=(32, 64, 128, 128)):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.GELU()]
            channels = width
        self.convs = nn.Sequential(*layers, nn.Conv2d(channels, hidden, 1))   # to the tower's width
        self.post_layernorm = nn.LayerNorm(hidden)

    def forward(self, pixel_values, **kwargs):
        grid = self.convs(pixel_values)                                     # (B, D, 4, 4)
        tokens = grid.flatten(2).transpose(1, 2)                            # (B, 16, D): the grid as tokens
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=self.post_layernorm(tokens.mean(dim=1))
        )
