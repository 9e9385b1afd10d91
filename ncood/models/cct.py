"""CCT-7/3x1, the Compact Convolutional Transformer of Hassani et al. 2021 ("Escaping the Big Data Paradigm with
Compact Transformers"), one of the TMLR 2024 paper's five architectures (Table 4; appendix A.1).

Written here because neither timm nor torchvision has CCT. The facts come from the authors' code
(github.com/SHI-Labs/Compact-Transformers, `src/cct.py`, `src/utils/tokenizer.py`, `src/utils/transformers.py`):
- cct_7_3x1_32 (cct.py l.239-246, l.139-141, l.94-95): 7 encoder layers, 4 heads, MLP ratio 2, embedding 256;
  tokenizer: 1 conv layer, kernel 3, stride max(1, 3 // 2 - 1) = 1, padding 1, no bias, ReLU, then max pool 3 /
  stride 2 / padding 1 (tokenizer.py l.23-35), so a 32x32 image gives 16 x 16 = 256 tokens;
- learnable positional embedding, truncated normal std 0.2 (transformers.py l.169-171); dropout 0, attention
  dropout 0.1, stochastic depth rising linearly 0 -> 0.1 over the layers (cct.py l.44-46, transformers.py l.179);
- encoder layer (transformers.py l.95-100): x = x + drop_path(attn(LN0(x))); x = LN1(x);
  x = x + drop_path(fc2(gelu(fc1(x)))). The second LayerNorm normalizes the residual stream itself, so neither
  torch's nn.TransformerEncoderLayer nor timm's Block is this layer; its parts are timm's Attention (qkv without
  bias, attention dropout), Mlp and DropPath;
- final LayerNorm, then sequence pooling (l.207-208): z = softmax_over_tokens(Linear_{d->1}(x))^T x, shape (B, d);
- init: tokenizer convs Kaiming normal (tokenizer.py l.48-49); every Linear truncated normal std 0.02 with zero
  bias, LayerNorm weight 1 / bias 0 (transformers.py l.216-223).
z (the sequence-pooled token) is the feature vector; the classifier is ncood's Linear head (L2 optional).
`width` sets the embedding dimension to 4 * width (width 64 = CCT-7/3x1's 256; 4 heads of width channels each).
The CCT training recipe (AdamW, cosine, batch 128, 300 epochs) lives in the tmlr presets (ncood.tune.grid).
DDU's spectral norm and leaky/GAP do not apply (attention/LayerNorm network): the registry refuses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncood.models.layers import FeatureClassifier, LayerSpec, conv_out_size
from ncood.models.registry import register_model

LAYERS, HEADS, MLP_RATIO = 7, 4, 2
ATTN_DROP, DROP_PATH, POS_STD = 0.1, 0.1, 0.2
KERNEL, STRIDE, PAD = 3, 1, 1  # tokenizer conv ("3x1": kernel 3, one conv layer)
POOL_K, POOL_S, POOL_P = 3, 2, 1


class CCTLayer(nn.Module):
    """CCT's encoder layer: residual attention on LN0(x), then LN1 on the stream, then a residual MLP."""

    def __init__(self, dim: int, drop_path: float) -> None:
        from timm.layers import Attention, DropPath, Mlp  # here: importing timm costs every process ~0.5 s

        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=HEADS, qkv_bias=False, attn_drop=ATTN_DROP)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=MLP_RATIO * dim)  # fc1, GELU, fc2
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, N, d) -> (B, N, d)
        x = x + self.drop_path(self.attn(self.pre_norm(x)))
        x = self.norm1(x)
        return x + self.drop_path(self.mlp(x))


class CCT(FeatureClassifier):
    """forward_features: (B, in_channels, S, S) -> (B, 4 * width), the sequence-pooled token."""

    def __init__(self, *, num_classes: int, in_channels: int, input_size: int, width: int, l2: bool,
                 spec: LayerSpec) -> None:
        dim = 4 * width
        super().__init__(dim, num_classes, l2)
        self.tokenizer = nn.Sequential(
            nn.Conv2d(in_channels, dim, KERNEL, stride=STRIDE, padding=PAD, bias=False), nn.ReLU(),
            nn.MaxPool2d(POOL_K, stride=POOL_S, padding=POOL_P))
        side = conv_out_size(conv_out_size(input_size, KERNEL, STRIDE, PAD), POOL_K, POOL_S, POOL_P)
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, dim))  # (1, N, d)
        rates = torch.linspace(0, DROP_PATH, LAYERS).tolist()
        self.blocks = nn.Sequential(*(CCTLayer(dim, r) for r in rates))
        self.norm = nn.LayerNorm(dim)
        self.attention_pool = nn.Linear(dim, 1)
        nn.init.trunc_normal_(self.pos_embed, std=POS_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        tokens = self.tokenizer(x).flatten(2).transpose(1, 2)  # (B, d, h, w) -> (B, N, d)
        tokens = self.norm(self.blocks(tokens + self.pos_embed))
        weights = F.softmax(self.attention_pool(tokens), dim=1)  # (B, N, 1): sequence pooling over tokens
        return (weights.transpose(1, 2) @ tokens).squeeze(1)  # (B, d)


@register_model(toggles=())
def cct_7_3x1(**kw) -> CCT:
    return CCT(**kw)
